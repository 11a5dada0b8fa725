#!/usr/bin/env bash
# What one proxied call costs the gateway, in counts that do not depend on how busy the machine
# is (unlike req/s): skyfri serves the bench's `upstream` function (`http` template, the
# bench_upstream binary) and wrk calls /function/upstream for a fixed time; the counts are
# divided by the calls served.
#
#   bash bench/profile.sh                  # callgrind: user-space instructions per call
#   PROFILE=perf bash bench/profile.sh     # perf stat: CPU time, syscalls, context switches
#                                          # per call, skyfri beside nginx in the same run
#
# callgrind (valgrind) runs the gateway about 50x slower and one thread at a time: it counts
# the instructions the gateway itself executes (hyper, axum, tokio, the invoke path, malloc),
# not the kernel's work (syscalls, wake-ups); perf counts those. The callgrind profile
# (inclusive, by function) goes to bench/out/profile-callgrind.txt, the raw file beside it.
#
# Knobs (env): PROFILE (callgrind | perf), PROFILE_SECONDS (10; callgrind 20) of load after
# PROFILE_WARMUP (3) seconds, PROFILE_CONNECTIONS (16), SKYFRI_ACCESS_LOG (file),
# BENCH_SKYFRI_BIN + BENCH_UPSTREAM_BIN (prebuilt binaries, else a release build).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

MODE="${PROFILE:-callgrind}"
case "$MODE" in callgrind) DEF_SECONDS=20 ;; perf) DEF_SECONDS=10 ;; *) echo "profile: PROFILE must be callgrind or perf" >&2; exit 2 ;; esac
SECS="${PROFILE_SECONDS:-$DEF_SECONDS}"
WARMUP="${PROFILE_WARMUP:-3}"
CONNS="${PROFILE_CONNECTIONS:-16}"
source "$ROOT/bench/lib.sh"
whole_numbers 0 "$SECS" "$WARMUP" "$CONNS"

bash bench/setup.sh
command -v wrk >/dev/null || { echo "profile: wrk missing" >&2; exit 1; }
if [ "$MODE" = callgrind ]; then
  command -v valgrind >/dev/null && command -v callgrind_control >/dev/null \
    || { echo "profile: valgrind missing (apt-get install valgrind)" >&2; exit 1; }
else
  command -v perf >/dev/null || { echo "profile: perf missing (apt-get install linux-perf)" >&2; exit 1; }
fi

if [ -n "${BENCH_SKYFRI_BIN:-}" ] && [ -n "${BENCH_UPSTREAM_BIN:-}" ]; then
  SKYFRI="$(realpath "$BENCH_SKYFRI_BIN")"
  UPSTREAM_BIN="$(realpath "$BENCH_UPSTREAM_BIN")"
else
  # Line tables only: function names and lines for the profile, the same code otherwise.
  CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    cargo build --release -p skyfri --bin skyfri --example bench_upstream
  TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  SKYFRI="$TARGET_DIR/release/skyfri"
  UPSTREAM_BIN="$TARGET_DIR/release/examples/bench_upstream"
fi
[ -x "$SKYFRI" ] && [ -x "$UPSTREAM_BIN" ] || { echo "profile: binaries not found" >&2; exit 1; }

mkdir -p bench/out

SKY_PORT="$(free_port)"
mkdir -p "$WORK/stack/upstream" "$WORK/skyfri-data"
cp "$UPSTREAM_BIN" "$WORK/stack/upstream/bench_upstream"
cat >"$WORK/stack/stack.yml" <<EOF
version: 1.0
provider:
  name: openfaas
  gateway: http://127.0.0.1:$SKY_PORT
functions:
  upstream:
    lang: http
    handler: ./upstream
    image: skyfri-bench/upstream:latest
    fprocess: ./bench_upstream
    labels:
      com.openfaas.scale.min: "1"
      com.openfaas.scale.max: "1"
EOF
WRAP=()
if [ "$MODE" = callgrind ]; then
  WRAP=(valgrind --tool=callgrind --instr-atstart=no --trace-children=no
        "--callgrind-out-file=$WORK/callgrind.out")
fi
SKYFRI_ADMIN_PASSWORD="profile-$(python3 -c 'import secrets; print(secrets.token_hex(12))')" \
SKYFRI_LOG="${SKYFRI_LOG:-warn}" \
  "${WRAP[@]}" "$SKYFRI" up --listen "127.0.0.1:$SKY_PORT" --ui-listen off --data-dir "$WORK/skyfri-data" \
  -f "$WORK/stack/stack.yml" >"$WORK/skyfri.log" 2>&1 &
SKY_PID=$!
PIDS+=("$SKY_PID")

deadline=$((SECONDS + 300))
until grep -qx ready "$WORK/skyfri.log" 2>/dev/null; do
  if ! kill -0 "$SKY_PID" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
    echo "profile: skyfri did not come up; its log:" >&2; tail -n 40 "$WORK/skyfri.log" >&2; exit 1
  fi
  sleep 0.5
done
URL="http://127.0.0.1:$SKY_PORT/function/upstream"
wait_http "$URL" 120 || { echo "profile: $URL does not answer 200" >&2; tail -n 40 "$WORK/skyfri.log" >&2; exit 1; }

# load SECONDS URL OUT: wrk with a warm-up; prints the calls served.
load() {
  [ "$WARMUP" -gt 0 ] && timeout $((WARMUP + 60)) wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$2" >/dev/null 2>&1
  timeout $(($1 + 60)) wrk -t1 -c"$CONNS" -d"$1s" "$2" >"$3" 2>&1
  awk '/requests in/ {print $1}' "$3"
}
non2xx() { awk '/Non-2xx/ {print $NF}' "$1"; }

if [ "$MODE" = callgrind ]; then
  [ "$WARMUP" -gt 0 ] && timeout $((WARMUP + 60)) wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$URL" >/dev/null 2>&1
  callgrind_control -i on "$SKY_PID" >/dev/null
  callgrind_control -z "$SKY_PID" >/dev/null
  OLD_WARMUP="$WARMUP"; WARMUP=0
  CALLS="$(load "$SECS" "$URL" "$WORK/wrk.txt")"
  WARMUP="$OLD_WARMUP"
  callgrind_control -d "$SKY_PID" >/dev/null
  callgrind_control -i off "$SKY_PID" >/dev/null
  DUMP="$(ls -t "$WORK"/callgrind.out* | head -n 1)"
  IR="$(awk '/^(summary|totals):/ {print $2; exit}' "$DUMP")"
  callgrind_annotate --inclusive=yes --threshold=99.9 "$DUMP" >bench/out/profile-callgrind.txt 2>/dev/null || true
  cp "$DUMP" bench/out/callgrind.out
  {
    echo "## gateway instructions per call (callgrind), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)'); access log: ${SKYFRI_ACCESS_LOG:-file}; wrk -t1 -c$CONNS -d${SECS}s on /function/upstream."
    echo
    echo "- calls served: $CALLS (non-2xx: $(non2xx "$WORK/wrk.txt"))"
    echo "- instructions (user space, every gateway thread): $IR"
    echo "- **instructions per call: $(awk -v i="$IR" -v n="$CALLS" 'BEGIN {printf "%.0f", i / n}')**"
  } | tee bench/out/profile.md
else
  # nginx in front of the same upstream: the replica skyfri runs.
  UP_PORT="$(replica_port "$SKY_PID" bench_upstream)" \
    || { echo "profile: cannot find the port of skyfri's replica" >&2; exit 1; }
  start_nginx "$UP_PORT"
  wait_http "http://127.0.0.1:$NGX_PORT/" 30 || { echo "profile: nginx did not start" >&2; exit 1; }
  EVENTS=task-clock,context-switches,raw_syscalls:sys_enter

  # measure NAME URL PID...: perf stat on the PIDs (every thread) while wrk runs.
  measure() {
    local name="$1" url="$2"; shift 2
    local pids; pids="$(printf '%s,' "$@")"; pids="${pids%,}"
    [ "$WARMUP" -gt 0 ] && timeout $((WARMUP + 60)) wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$url" >/dev/null 2>&1
    perf stat -x, -e "$EVENTS" -p "$pids" -o "$WORK/perf-$name.csv" -- sleep $((SECS + 1)) &
    local perf_pid=$!
    sleep 0.5
    timeout $((SECS + 60)) wrk -t1 -c"$CONNS" -d"${SECS}s" "$url" >"$WORK/wrk-$name.txt" 2>&1
    wait "$perf_pid" || true
    local calls; calls="$(awk '/requests in/ {print $1}' "$WORK/wrk-$name.txt")"
    awk -F, -v n="$calls" -v name="$name" -v rps="$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$WORK/wrk-$name.txt")" '
      $3 == "task-clock" {cpu = $1}
      $3 == "context-switches" {cs = $1}
      $3 == "raw_syscalls:sys_enter" {sc = $1}
      END {printf "| %s | %d | %d | %.1f | %.2f | %.2f |\n", name, rps, n, cpu * 1000 / n, sc / n, cs / n}' "$WORK/perf-$name.csv"
  }
  NGX_PIDS=("$NGX_PID" $(pgrep -P "$NGX_PID" || true))
  {
    echo "## proxy cost per call (perf stat), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)'); access log: ${SKYFRI_ACCESS_LOG:-file}; wrk -t1 -c$CONNS -d${SECS}s; counted over the proxy's processes only (not wrk, not the upstream)."
    echo
    echo "| proxy | req/s | calls | CPU µs per call | syscalls per call | context switches per call |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    measure nginx "http://127.0.0.1:$NGX_PORT/" "${NGX_PIDS[@]}"
    measure skyfri "$URL" "$SKY_PID"
  } | tee bench/out/profile.md
fi
