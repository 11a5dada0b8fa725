#!/usr/bin/env bash
# Isolation costs and guarantees, measured (issue 3's bench):
#  (a) replica start time, plain process vs sandbox (bwrap + cgroups), p50/p99 over N deploys;
#  (b) the noisy neighbour: function B (`steady`, python3) served at a FIXED request rate (open
#      loop, bench/load.py: latency from each request's due time, so stalls are not hidden),
#      alone, then while function A (`burner`, `limits.cpu: 500m`) spins BENCH_BURNERS
#      processes; B's p50/p99/max, the ratio, and A's CPU use and throttling from its cgroup.
#      Budget (DESIGN): B's p99 beside A <= 1.5x alone. Secondary, for comparison: the same
#      alone/beside pair under closed-loop `wrk -t1 -cN` (saturates both cores by itself, so
#      it measures queueing behind any CPU A gets, not the quota).
# Knobs (env): BENCH_RATE (200) req/s for B, BENCH_SECONDS (10) per measurement,
# BENCH_WARMUP (2) unmeasured seconds before each open-loop run, BENCH_CONNECTIONS (4)
# keep-alive connections (open loop and wrk), BENCH_BURNERS (2) spinning processes in A,
# BENCH_STARTS (20) deploys per isolation in (a), BENCH_WRK (1; 0 skips the wrk rows),
# BENCH_SKYFRI_BIN (a prebuilt skyfri: skip the build; bench_start is then taken from
# BENCH_START_BIN or the target dir, built only when missing), BENCH_STRICT=1 to exit 1 when
# the budget is missed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SECONDS_PER_RUN="${BENCH_SECONDS:-10}"
STARTS="${BENCH_STARTS:-20}"
CONNS="${BENCH_CONNECTIONS:-4}"
BURNERS="${BENCH_BURNERS:-2}"
RATE="${BENCH_RATE:-200}"
WARMUP="${BENCH_WARMUP:-2}"
WRK="${BENCH_WRK:-1}"
STRICT="${BENCH_STRICT:-0}"
for v in "$SECONDS_PER_RUN" "$STARTS" "$CONNS" "$BURNERS" "$RATE"; do
  [[ "$v" =~ ^[0-9]+$ ]] && [ "$v" -ge 1 ] || { echo "bench: knobs must be whole numbers >= 1 (got '$v')" >&2; exit 2; }
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || { echo "bench: BENCH_WARMUP must be a whole number (got '$WARMUP')" >&2; exit 2; }
[ "$SECONDS_PER_RUN" -le 600 ] && [ "$WARMUP" -le 600 ] && [ "$RATE" -le 100000 ] && [ "$CONNS" -le 1000 ] \
  || { echo "bench: BENCH_SECONDS/BENCH_WARMUP <= 600, BENCH_RATE <= 100000, BENCH_CONNECTIONS <= 1000" >&2; exit 2; }

bash scripts/setup.sh
bash bench/setup.sh
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -n "${BENCH_SKYFRI_BIN:-}" ]; then
  SKYFRI="$(realpath "$BENCH_SKYFRI_BIN")"
  BENCH_START="${BENCH_START_BIN:-$TARGET_DIR/release/examples/bench_start}"
  if [ ! -x "$BENCH_START" ]; then
    echo "bench: building the bench_start example"
    cargo build --release -p skyfri-runtime --example bench_start
  fi
else
  echo "bench: building release skyfri and the bench_start example"
  cargo build --release -p skyfri --bin skyfri -p skyfri-runtime --example bench_start
  SKYFRI="$TARGET_DIR/release/skyfri"
  BENCH_START="$TARGET_DIR/release/examples/bench_start"
fi
[ -x "$SKYFRI" ] && [ -x "$BENCH_START" ] || { echo "bench: missing $SKYFRI or $BENCH_START" >&2; exit 1; }

source "$ROOT/bench/lib.sh"

# ---------------------------------------------------------------- (a) start time
echo "bench: $STARTS deploys of a python3 function per isolation"
"$BENCH_START" "$STARTS" >"$WORK/start.txt"
read -r _ PLAIN_P50 PLAIN_P99 < <(grep '^plain ' "$WORK/start.txt")
read -r _ BOX_P50 BOX_P99 < <(grep '^sandboxed ' "$WORK/start.txt")


# ---------------------------------------------------------------- (b) noisy neighbour
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"   # other work on the host shows in B's latency
PORT="$(free_port)"
URL="http://127.0.0.1:$PORT"
mkdir -p "$WORK/stack/burner" "$WORK/stack/steady"
cat >"$WORK/stack/burner/handler.py" <<'PY'
import os
import time


def burn(until):
    while time.time() < until:
        pass


def handle(req):
    # N processes spinning: as much as N whole cores, if nothing holds them back. Answers
    # with the CPU time the spinners got (their rusage) over the wall time.
    seconds, procs = (req or "1 1").split()
    t0 = time.time()
    until = t0 + float(seconds)
    children = []
    for _ in range(int(procs)):
        pid = os.fork()
        if pid == 0:
            burn(until)
            os._exit(0)
        children.append(pid)
    cpu = 0.0
    for pid in children:
        _, _, ru = os.wait4(pid, 0)
        cpu += ru.ru_utime + ru.ru_stime
    wall = time.time() - t0
    return f"burnt {cpu:.2f} CPU-s in {wall:.2f} s = {cpu / wall:.2f} cores"
PY
cat >"$WORK/stack/steady/handler.py" <<'PY'
def handle(req):
    return sum(range(2000))
PY
cat >"$WORK/stack/stack.yml" <<YML
functions:
  burner:
    lang: python3
    handler: ./burner
    limits:
      cpu: 500m
    environment:
      exec_timeout: 900s
  steady:
    lang: python3
    handler: ./steady
YML
SKYFRI_ADMIN_PASSWORD="bench-$(python3 -c 'import secrets; print(secrets.token_hex(12))')" SKYFRI_LOG=warn \
  "$SKYFRI" up --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" -f "$WORK/stack/stack.yml" >"$WORK/skyfri.log" 2>&1 &
SKY_PID=$!
PIDS+=("$SKY_PID")
wait_http "$URL/function/steady" 60 || { echo "bench: skyfri did not serve steady" >&2; tail -n 30 "$WORK/skyfri.log" >&2; exit 1; }

# A's cgroup(s): where its replica's processes are (v1: the cpu controller's group; v2: the group).
CGROUPS=()
for _ in $(seq 1 300); do
  mapfile -t CG_LINES < <(python3 bench/load.py find-cgroups burner "$SKY_PID" || true)
  [ "${#CG_LINES[@]}" -gt 0 ] && break
  sleep 0.1
done
[ "${#CG_LINES[@]}" -gt 0 ] || { echo "bench: no cgroup of burner's replica found" >&2; tail -n 30 "$WORK/skyfri.log" >&2; exit 1; }
CPU_CG=""
ACCT_CG=""
for line in "${CG_LINES[@]}"; do
  case "$line" in
    "cpu "*) CPU_CG="${line#cpu }"; CGROUPS+=(--cgroup "$CPU_CG") ;;
    "cpuacct "*) ACCT_CG="${line#cpuacct }"; CGROUPS+=(--cgroup "$ACCT_CG") ;;
  esac
done
# cgroup v1 with cpu and cpuacct mounted apart: skyfri limits through `cpu` only, whose
# cpu.stat counts throttling but not usage. For the usage, the bench puts A's processes (its
# children follow) in a cpuacct group of its own; accounting only, no limit.
BENCH_ACCT=""
if [ -z "$ACCT_CG" ] && [ "${CPU_CG#/sys/fs/cgroup/cpu/}" != "$CPU_CG" ] && [ -w /sys/fs/cgroup/cpuacct/cgroup.procs ]; then
  BENCH_ACCT="/sys/fs/cgroup/cpuacct/skyfri-bench-$$"
  if mkdir "$BENCH_ACCT" 2>/dev/null; then
    while read -r pid; do echo "$pid" >"$BENCH_ACCT/cgroup.procs" 2>/dev/null || true; done <"$CPU_CG/cgroup.procs"
    CGROUPS+=(--cgroup "$BENCH_ACCT")
    ACCT_CG="$BENCH_ACCT"
  else
    BENCH_ACCT=""
  fi
fi
bench_cleanup() {
  cleanup
  if [ -n "$BENCH_ACCT" ]; then
    # Empty once skyfri has stopped its replicas (cleanup waited for skyfri itself).
    for _ in $(seq 1 50); do rmdir "$BENCH_ACCT" 2>/dev/null && break; sleep 0.1; done
  fi
}
trap bench_cleanup EXIT
echo "bench: burner's cgroups: ${CPU_CG:-none} (cpu), ${ACCT_CG:-none} (usage)"

open_loop() {   # open_loop LABEL: bench/load.py against steady at RATE, A's cgroups read around it
  echo "bench: steady at $RATE req/s over $CONNS connections, $SECONDS_PER_RUN s ($1)"
  BENCH_RATE="$RATE" BENCH_SECONDS="$SECONDS_PER_RUN" BENCH_WARMUP="$WARMUP" BENCH_CONNECTIONS="$CONNS" \
    timeout $((WARMUP + SECONDS_PER_RUN + 120)) python3 bench/load.py run "$URL/function/steady" "$WORK/open-$1.json" "${CGROUPS[@]}"
}
wrk_p99() {   # wrk_p99 LABEL: closed-loop wrk against steady; "req/s p99(µs)"
  timeout $((SECONDS_PER_RUN + 60)) wrk -t1 -c"$CONNS" -d"${SECONDS_PER_RUN}s" --latency \
    "$URL/function/steady" >"$WORK/wrk-$1.txt"
  echo "$(awk '$1 == "Requests/sec:" {printf "%.0f", $2}' "$WORK/wrk-$1.txt") $(to_us "$(awk '$1 == "99%" {print $2}' "$WORK/wrk-$1.txt")")"
}

open_loop alone
if [ "$WRK" = 1 ]; then
  wrk -t1 -c"$CONNS" -d2s "$URL/function/steady" >/dev/null
  read -r WRK_RPS_ALONE WRK_ALONE < <(wrk_p99 alone)
fi
# A burns through both measurements beside it (and a second on either side).
BURN_SECONDS=$((1 + WARMUP + SECONDS_PER_RUN + 2))
[ "$WRK" = 1 ] && BURN_SECONDS=$((BURN_SECONDS + SECONDS_PER_RUN + 1))
curl -s -o "$WORK/burner.txt" --max-time $((BURN_SECONDS + 120)) -d "$BURN_SECONDS $BURNERS" "$URL/function/burner" &
BURN_PID=$!
sleep 1
open_loop beside
if [ "$WRK" = 1 ]; then
  read -r WRK_RPS_BESIDE WRK_BESIDE < <(wrk_p99 beside)
fi
wait "$BURN_PID" || true
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
BURNT="$(cat "$WORK/burner.txt" 2>/dev/null || true)"

set +e
python3 bench/load.py report "$WORK/open-alone.json" "$WORK/open-beside.json" \
  "beside A ($BURNERS spinning processes, limits.cpu 500m)" >"$WORK/open.md"
rc=$?
set -e
case "$rc" in 0) VERDICT=PASS ;; 4) VERDICT=FAIL ;; *) echo "bench: load.py report failed ($rc)" >&2; exit 1 ;; esac

{
  echo "## skyfri isolation benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Machine: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sr);" \
    "load average (1/5/15 min) before (b): $LOAD_BEFORE, after: $LOAD_AFTER."
  echo "Commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (dirty)'); skyfri: $SKYFRI."
  echo "Isolation: $(grep '^isolation:' "$WORK/skyfri.log" | sed 's/^isolation: //')."
  echo
  echo "| replica start (deploy to ready, python3) | p50 (ms) | p99 (ms) |"
  echo "| --- | ---: | ---: |"
  echo "| plain process | $PLAIN_P50 | $PLAIN_P99 |"
  echo "| sandbox (bwrap + cgroups) | $BOX_P50 | $BOX_P99 |"
  echo
  cat "$WORK/open.md"
  echo "- A's own account of the whole burn: ${BURNT:-no answer}"
  if [ "$WRK" = 1 ]; then
    RATIO="$(awk -v a="$WRK_BESIDE" -v b="$WRK_ALONE" 'BEGIN {printf "%.2f", a / b}')"
    echo
    echo "Secondary, closed loop (saturating: wrk alone keeps both cores busy, so any CPU A gets shows as queueing):"
    echo
    echo "| steady under wrk -t1 -c$CONNS -d${SECONDS_PER_RUN}s (saturating) | req/s alone | p99 alone (µs) | req/s beside A | p99 beside A (µs) | p99 ratio |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    echo "| closed loop | $WRK_RPS_ALONE | $WRK_ALONE | $WRK_RPS_BESIDE | $WRK_BESIDE | ${RATIO}x |"
  fi
} >"$WORK/report.md"
echo
cat "$WORK/report.md"
mkdir -p bench/out
cp "$WORK/report.md" bench/out/isolation.md
if [ "$STRICT" = 1 ] && [ "$VERDICT" != PASS ]; then exit 1; fi
