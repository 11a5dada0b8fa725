#!/usr/bin/env bash
# Installs the system packages skyfri and its tests need, when they are missing.
# Idempotent; called by scripts/up.sh and scripts/test.sh. Needs root (or sudo) on a fresh machine.
set -euo pipefail

need=()
[ -x /usr/bin/python3 ] || need+=(python3)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v tar >/dev/null 2>&1 || need+=(tar)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
