#!/usr/bin/env bash
# Runs the platform with the example function (embedded defaults), in the foreground.
# Extra arguments go to `skyfri up` (e.g. --listen 0.0.0.0:8080). The functions are at
# http://127.0.0.1:8080/function/NAME, the dashboard on its own port: http://127.0.0.1:8081/ui.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p skyfri
exec target/release/skyfri up -f examples/hello/stack.yml "$@"
