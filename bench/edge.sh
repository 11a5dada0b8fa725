#!/usr/bin/env bash
# The gateway at the edge, measured (issue 6's load figures): a python3 function called by a
# few ordinary keep-alive clients (closed loop) alone, beside BENCH_HELD (10,000) held
# keep-alive connections, and beside those plus BENCH_SLOW (1,000) slowloris clients, which
# the header timeout must cut off. The driver is bench/edge.py (python3 asyncio); the table
# goes to bench/out/edge.md.
#
# Knobs (env): BENCH_HELD (10000), BENCH_SLOW (1000), BENCH_SECONDS (10) per phase,
# BENCH_CALLERS (8), BENCH_SKYFRI_BIN (a prebuilt skyfri), BENCH_READY_TIMEOUT (180).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
READY_TIMEOUT="${BENCH_READY_TIMEOUT:-180}"
source "$ROOT/bench/lib.sh"
whole_numbers 1 "${BENCH_HELD:-10000}" "${BENCH_SLOW:-1000}" "${BENCH_SECONDS:-10}" "${BENCH_CALLERS:-8}" "$READY_TIMEOUT"

bash scripts/setup.sh --tests   # curl
PYTHON=/usr/bin/python3
if [ -n "${BENCH_SKYFRI_BIN:-}" ]; then
  SKYFRI="$(realpath "$BENCH_SKYFRI_BIN")"
else
  echo "bench: building release skyfri"
  cargo build --release -p skyfri --bin skyfri
  SKYFRI="$ROOT/target/release/skyfri"
fi

ulimit -n "$(ulimit -Hn)"

PORT="$(free_port)"
URL="http://127.0.0.1:$PORT"
PASSWORD="bench-$("$PYTHON" -c 'import secrets; print(secrets.token_hex(12))')"
mkdir -p "$WORK/stack/hello" "$WORK/data"
cat >"$WORK/stack/hello/handler.py" <<'PY'
def handle(req):
    return "ok"
PY
cat >"$WORK/stack/stack.yml" <<YML
version: 1.0
provider:
  name: openfaas
  gateway: $URL
functions:
  hello:
    lang: python3
    handler: ./hello
    image: skyfri-bench/edge-hello:latest
    labels:
      com.openfaas.scale.min: "1"
YML

SKYFRI_ADMIN_PASSWORD="$PASSWORD" SKYFRI_LOG="${SKYFRI_LOG:-warn}" \
  "$SKYFRI" up --listen "127.0.0.1:$PORT" --ui-listen off --data-dir "$WORK/data" -f "$WORK/stack/stack.yml" \
  >"$WORK/skyfri.log" 2>&1 &
PIDS+=($!)
SKY_PID=$!
deadline=$((SECONDS + READY_TIMEOUT))
until grep -qx ready "$WORK/skyfri.log" 2>/dev/null; do
  kill -0 "$SKY_PID" 2>/dev/null || { tail -n 30 "$WORK/skyfri.log" >&2; exit 1; }
  [ "$SECONDS" -lt "$deadline" ] || { echo "bench: skyfri not ready" >&2; exit 1; }
  sleep 0.1
done
[ "$(curl -s -d x "$URL/function/hello")" = ok ] || { echo "bench: hello does not answer" >&2; tail -n 30 "$WORK/skyfri.log" >&2; exit 1; }

"$PYTHON" "$ROOT/bench/edge.py" 127.0.0.1 "$PORT" /function/hello "$WORK"
kill -0 "$SKY_PID" 2>/dev/null || { echo "bench: skyfri died during the run" >&2; tail -n 30 "$WORK/skyfri.log" >&2; exit 1; }
mkdir -p bench/out
{
  echo "## skyfri at the edge, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Machine: $(nproc) cores, $(uname -sr); load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown). Gateway: default limits (header timeout 15 s, 16384 connections)."
  echo
  cat "$WORK/report.md"
} | tee bench/out/edge.md
