#!/usr/bin/env bash
# Cold starts and a burst from zero, measured (issue 4's bench):
#  1. reference: wall time of `python3 -c pass` and `node -e 0`, N runs each;
#  2. skyfri cold starts: a trivial python3 and a trivial node function, scaled to zero before
#     every sample (stem-cell pool refilled), one call timed to its first byte, then the same
#     call warm; the same for a lambda-python function (AWS's awslambdaric, no stem cells);
#  3. a burst of 500 concurrent calls on a python3 function at zero (sleeps 50 ms, max 20
#     replicas): errors, completion time against the ideal ceil(500/20) x 50 ms, peak replicas.
# Budgets (DESIGN): cold start python3 p50 <= 5 ms, p99 <= 20 ms; node p50 <= 15 ms; burst
# errors 0. Prints a markdown table and writes it to bench/out/coldstart.md. The timing itself
# is bench/coldstart.py (python3 standard library, raw sockets, perf_counter_ns).
#
# Knobs (env): BENCH_COLD_SAMPLES (200) per runtime, BENCH_REF_SAMPLES (= cold samples) runs
# of each interpreter, BENCH_COLD_CELLS (2: the pool's full depth) idle stem cells of the
# runtime to wait for before each cold sample, BENCH_BURST (500) concurrent calls, BENCH_READY_TIMEOUT (180) seconds
# for skyfri to come up, BENCH_STRICT=1 to exit 1 when a budget is missed, BENCH_SKYFRI_BIN
# to use a prebuilt skyfri, SKYFRI_LOG (info: it logs scaling decisions, not calls) skyfri's log filter.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

COLD_SAMPLES="${BENCH_COLD_SAMPLES:-200}"
REF_SAMPLES="${BENCH_REF_SAMPLES:-$COLD_SAMPLES}"
BURST="${BENCH_BURST:-500}"
READY_TIMEOUT="${BENCH_READY_TIMEOUT:-180}"
COLD_CELLS="${BENCH_COLD_CELLS:-2}"
STRICT="${BENCH_STRICT:-0}"
source "$ROOT/bench/lib.sh"
whole_numbers 1 "$COLD_SAMPLES" "$REF_SAMPLES" "$BURST" "$READY_TIMEOUT" "$COLD_CELLS"
[ "$COLD_SAMPLES" -le 10000 ] && [ "$REF_SAMPLES" -le 10000 ] || { echo "bench: at most 10000 samples" >&2; exit 2; }
[ "$BURST" -le 5000 ] || { echo "bench: BENCH_BURST must be 1..5000" >&2; exit 2; }
BURST_MAX=20        # com.openfaas.scale.max of `burst`; the ideal is computed from it
BURST_SLEEP_MS=50   # what `burst` sleeps per call

# ---------------------------------------------------------------- prerequisites
if [ -f scripts/setup.sh ]; then bash scripts/setup.sh; fi   # python3, node, bwrap
PYTHON=/usr/bin/python3
NODE="$(command -v node || true)"
[ -x "$PYTHON" ] && [ -n "$NODE" ] || { echo "bench: /usr/bin/python3 and node are needed" >&2; exit 1; }
NODE="$(realpath "$NODE")"

release_skyfri

# ---------------------------------------------------------------- skyfri and the stack
# 500 connections in the client and as many in the gateway (plus its replicas' sockets).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 4096 2>/dev/null || true

SKYFRI_LOG="${SKYFRI_LOG:-info}" start_skyfri "$READY_TIMEOUT"
URL="$SKY_URL"
PASSWORD="$SKY_PASSWORD"
mkdir -p "$WORK/stack/cold-py" "$WORK/stack/cold-node" "$WORK/stack/burst" "$WORK/stack/cold-lambda-py"
cat >"$WORK/stack/cold-py/handler.py" <<'PY'
def handle(req):
    return "ok"
PY
cat >"$WORK/stack/cold-node/handler.js" <<'JS'
'use strict';

module.exports = async (event, context) => context.status(200).succeed('ok');
JS
# The same handler as an AWS Lambda function, run by AWS's awslambdaric (no stem cells).
cat >"$WORK/stack/cold-lambda-py/handler.py" <<'PY'
def handler(event, context):
    return "ok"
PY
cat >"$WORK/stack/burst/handler.py" <<PY
import time

def handle(req):
    time.sleep($BURST_SLEEP_MS / 1000)
    return "ok"
PY
# Scale-to-zero after an hour of idleness only: between samples the bench scales to zero
# itself, and the autoscaler must not take replicas away (or add them) in between.
LABELS='      com.openfaas.scale.min: "0"
      com.openfaas.scale.zero-duration: "1h"'
ANNOTATIONS='    annotations:
      autoscaling.knative.dev/initial-scale: "0"'
cat >"$WORK/stack/stack.yml" <<YML
version: 1.0
provider:
  name: openfaas
  gateway: $URL
functions:
  cold-py:
    lang: python3
    handler: ./cold-py
    image: skyfri-bench/cold-py:latest
    labels:
$LABELS
$ANNOTATIONS
  cold-node:
    lang: node
    handler: ./cold-node
    image: skyfri-bench/cold-node:latest
    labels:
$LABELS
$ANNOTATIONS
  cold-lambda-py:
    lang: lambda-python
    handler: ./cold-lambda-py
    image: skyfri-bench/cold-lambda-py:latest
    labels:
$LABELS
$ANNOTATIONS
  burst:
    lang: python3
    handler: ./burst
    image: skyfri-bench/burst:latest
    labels:
$LABELS
      com.openfaas.scale.max: "$BURST_MAX"
$ANNOTATIONS
YML

echo "bench: skyfri ready on $URL; deploying cold-py, cold-node, cold-lambda-py, burst"
skyfri_deploy "$WORK/stack" >"$WORK/deploy.log" 2>&1 || { cat "$WORK/deploy.log" >&2; fail "deploy failed"; }

# ---------------------------------------------------------------- measure
set +e
SKYFRI_PASSWORD="$PASSWORD" BENCH_COLD_SAMPLES="$COLD_SAMPLES" BENCH_REF_SAMPLES="$REF_SAMPLES" \
  BENCH_COLD_CELLS="$COLD_CELLS" BENCH_BURST="$BURST" BENCH_BURST_MAX="$BURST_MAX" BENCH_BURST_SLEEP_MS="$BURST_SLEEP_MS" BENCH_NODE="$NODE" \
  timeout 1800 "$PYTHON" "$ROOT/bench/coldstart.py" "$URL" "$WORK"
rc=$?
set -e
mkdir -p bench/out
cp "$WORK/skyfri.log" bench/out/coldstart-skyfri.log
kill -0 "$SKY_PID" 2>/dev/null || fail "skyfri died during the run"
[ "$rc" = 0 ] || fail "measurement failed (exit $rc)"

# ---------------------------------------------------------------- report
WARNINGS="$(grep -cE ' (WARN|ERROR) ' "$WORK/skyfri.log" || true)"
{
  echo "## skyfri cold-start benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "$(machine_line)."
  commit_line
  echo "Isolation: $(grep -m1 '^isolation:' "$WORK/skyfri.log" | sed 's/^isolation: //' || true)."
  echo "Interpreters: $("$PYTHON" --version 2>&1), node $("$NODE" --version)."
  echo
  cat "$WORK/report.md"
  echo
  echo "skyfri log: $WARNINGS warning/error lines (filter ${SKYFRI_LOG:-info})."
} >"$WORK/full.md"
echo
cat "$WORK/full.md"
echo
echo "bench: tail of skyfri's log:"
grep -vE 'api::(artefacts|functions): (built|deployed)' "$WORK/skyfri.log" | tail -n 6
if [ "$WARNINGS" != 0 ]; then
  echo
  echo "bench: last warnings/errors in skyfri's log:"
  grep -E ' (WARN|ERROR) ' "$WORK/skyfri.log" | tail -n 10
fi
mkdir -p bench/out
cp "$WORK/full.md" bench/out/coldstart.md
cp "$WORK/samples.json" bench/out/coldstart-samples.json
cp "$WORK/skyfri.log" bench/out/coldstart-skyfri.log
echo
echo "bench: wrote bench/out/coldstart.md (samples: bench/out/coldstart-samples.json, skyfri's log: bench/out/coldstart-skyfri.log)"
if [ "$STRICT" = 1 ] && [ "$(cat "$WORK/verdict")" != PASS ]; then exit 1; fi
exit 0
