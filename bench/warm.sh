#!/usr/bin/env bash
# Warm Python (DESIGN budget): "a trivial python3 handler on one replica >= 3x the requests/s
# of Flask+waitress behind a Go watchdog (the OpenFaaS python3-http stack)". wrk, at each
# concurrency of BENCH_CONCURRENCY, against:
#   reference: bench/watchdog (a stand-in for of-watchdog in http mode, Go standard library)
#              -> OpenFaaS's python3-http template (bench/python3-http: Flask 3.1.3 served by
#              waitress 3.0.2), handler `return {"statusCode": 200, "body": "ok"}`;
#   skyfri:    `skyfri up` -> a python3 function `handle(req): return "ok"`, one replica
#              (com.openfaas.scale.min and max 1).
# The two alternate, BENCH_RUNS times. Prints a markdown table (req/s, p50, p99, errors, CPU
# per request of each stack's processes from /proc) and the ratio, and writes it to
# bench/out/warm.md.
#
# Knobs (env): BENCH_SECONDS (10) per wrk run, BENCH_WARMUP (2) seconds of warm-up before
# each, BENCH_CONCURRENCY ("1 16") wrk connections, BENCH_RUNS (3), BENCH_THREADS (1) wrk
# threads, BENCH_READY_TIMEOUT (180), BENCH_STRICT=1 to exit 1 when the budget is missed at
# any concurrency, BENCH_SKYFRI_BIN to use a prebuilt skyfri, SKYFRI_LOG (warn).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

source "$ROOT/bench/lib.sh"
wrk_knobs
CONCURRENCY="${BENCH_CONCURRENCY:-1 16}"
RUNS="${BENCH_RUNS:-3}"
READY_TIMEOUT="${BENCH_READY_TIMEOUT:-180}"
STRICT="${BENCH_STRICT:-0}"
whole_numbers 0 "$RUNS" "$READY_TIMEOUT" $CONCURRENCY
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 20 ] || { echo "bench: BENCH_RUNS must be 1..20" >&2; exit 2; }
BUDGET=3

# ---------------------------------------------------------------- prerequisites
if [ -f scripts/setup.sh ]; then bash scripts/setup.sh; fi   # python3, bwrap
bash bench/setup.sh --warm                                   # wrk, go, Flask + waitress
VENV="$ROOT/bench/.venv-warm"
GO="$(command -v go || echo /usr/lib/go/bin/go)"
release_skyfri
echo "bench: building bench/watchdog"
(cd bench/watchdog && "$GO" build -o "$WORK/watchdog" .)

# ---------------------------------------------------------------- the reference stack
cp -r bench/python3-http "$WORK/python3-http"
WD_PORT="$(free_port)"
FLASK_PORT="$(free_port)"
(cd "$WORK/python3-http" && fprocess="$VENV/bin/python index.py" mode=http \
  upstream_url="http://127.0.0.1:$FLASK_PORT" BENCH_FLASK_PORT="$FLASK_PORT" port="$WD_PORT" \
  exec "$WORK/watchdog") >"$WORK/watchdog.log" 2>&1 &
WD_PID=$!
PIDS+=("$WD_PID")

# ---------------------------------------------------------------- skyfri
mkdir -p "$WORK/stack/hello"
cat >"$WORK/stack/hello/handler.py" <<'EOF'
def handle(req):
    return "ok"
EOF
cat >"$WORK/stack/stack.yml" <<EOF
version: 1.0
provider:
  name: openfaas
functions:
  hello:
    lang: python3
    handler: ./hello
    image: skyfri-bench/hello:latest
    labels:
      com.openfaas.scale.min: "1"
      com.openfaas.scale.max: "1"
EOF
start_skyfri "$READY_TIMEOUT" -f "$WORK/stack/stack.yml"

wait_http "http://127.0.0.1:$WD_PORT/" 60 \
  || { tail -n 20 "$WORK/watchdog.log" >&2; fail "the watchdog and Flask did not answer"; }
wait_http "$SKY_URL/function/hello" 60 || fail "/function/hello did not answer"
[ "$(curl -s "$SKY_URL/function/hello")" = ok ] && [ "$(curl -s "http://127.0.0.1:$WD_PORT/")" = ok ] \
  || fail "a stack did not answer ok"

# ---------------------------------------------------------------- load
UPTIME_BEFORE="$(awk '{print $1, $2, $3}' /proc/loadavg)"
for ((run = 1; run <= RUNS; run++)); do
  for CONNS in $CONCURRENCY; do
    run_wrk "ref-$CONNS-$run" "http://127.0.0.1:$WD_PORT/" "$WD_PID"
    run_wrk "sky-$CONNS-$run" "$SKY_URL/function/hello" "$SKY_PID"
  done
done

# ---------------------------------------------------------------- report
ratio() {   # ratio A B: A / B, two decimals, or n/a
  awk -v a="$1" -v b="$2" 'BEGIN {if (a == "" || b == "" || b == 0) print "n/a"; else printf "%.2f", a / b}'
}
cell() {   # cell KEY: req/s | p50 | p99 | errors | CPU µs per request
  local k="$1"
  if [ -n "${RPS[$k]:-}" ]; then
    printf '%s | %s | %s | %s | %s' "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}" "${ERRS[$k]}" "${CPU_US[$k]}"
  else
    printf 'n/a | n/a | n/a | n/a | n/a'
  fi
}
VERDICT=PASS
report() {
  local c run key ratios median
  echo "## skyfri warm-Python benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "$(machine_line); load average before: $UPTIME_BEFORE."
  commit_line
  echo "Isolation: $(grep -m1 '^isolation:' "$WORK/skyfri.log" | sed 's/^isolation: //' || true)."
  echo "Reference: bench/watchdog ($("$GO" version | awk '{print $3}')) -> Flask $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("flask"))') + waitress $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("waitress"))') ($("$VENV/bin/python" --version)); skyfri's replica: $(/usr/bin/python3 --version)."
  echo "Load: wrk -t$THREADS -d${SECONDS_PER_RUN}s --latency (after ${WARMUP}s warm-up), the stacks alternating, all on 127.0.0.1. CPU: user + system time of each stack's processes (watchdog + Python; skyfri + its replica and stem cells) during the run, per request."
  echo
  echo "| run | conns | reference req/s | p50 (µs) | p99 (µs) | errors | CPU µs/req | skyfri req/s | p50 (µs) | p99 (µs) | errors | CPU µs/req | skyfri/reference |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for c in $CONCURRENCY; do
    for ((run = 1; run <= RUNS; run++)); do
      echo "| $run | $c | $(cell "ref-$c-$run") | $(cell "sky-$c-$run") | $(ratio "${RPS[sky-$c-$run]:-}" "${RPS[ref-$c-$run]:-}")x |"
    done
  done
  echo
  for c in $CONCURRENCY; do
    ratios=""
    for ((run = 1; run <= RUNS; run++)); do
      ratios+="$(ratio "${RPS[sky-$c-$run]:-}" "${RPS[ref-$c-$run]:-}") "
    done
    median="$(tr ' ' '\n' <<<"$ratios" | grep -E '^[0-9.]+$' | sort -n \
      | awk '{v[NR] = $1} END {if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2}')"
    local ok
    ok="$(awk -v r="$median" -v b="$BUDGET" 'BEGIN {print (r != "n/a" && r >= b) ? "PASS" : "FAIL"}')"
    [ "$ok" = PASS ] || VERDICT=FAIL
    echo "- c$c: skyfri/reference req/s, median of $RUNS: **${median}x** (runs: ${ratios% }; budget >= ${BUDGET}x): **$ok**"
  done
}
report >"$WORK/report.md"   # not in a pipeline: VERDICT must survive
echo
cat "$WORK/report.md"
mkdir -p bench/out
cp "$WORK/report.md" bench/out/warm.md
echo
echo "bench: wrote bench/out/warm.md"
if [ "$STRICT" = 1 ] && [ "$VERDICT" != PASS ]; then exit 1; fi
exit 0
