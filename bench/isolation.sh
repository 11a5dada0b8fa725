#!/usr/bin/env bash
# Isolation costs and guarantees, measured (issue 3's bench):
#  (a) replica start time, plain process vs sandbox (bwrap + cgroups), p50/p99 over N deploys;
#  (b) the noisy neighbour: function B's p99 under wrk alone, then while function A burns two
#      cores' worth of CPU under `limits.cpu: 500m`. Budget: B's p99 beside A <= 1.5x alone.
# Knobs (env): BENCH_SECONDS (10) per wrk run, BENCH_STARTS (20) deploys per isolation,
# BENCH_CONNECTIONS (4), BENCH_BURNERS (2) spinning processes in A, BENCH_STRICT=1 to exit 1 when the budget is missed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SECONDS_PER_RUN="${BENCH_SECONDS:-10}"
STARTS="${BENCH_STARTS:-20}"
CONNS="${BENCH_CONNECTIONS:-4}"
BURNERS="${BENCH_BURNERS:-2}"
STRICT="${BENCH_STRICT:-0}"
for v in "$SECONDS_PER_RUN" "$STARTS" "$CONNS" "$BURNERS"; do
  [[ "$v" =~ ^[0-9]+$ ]] && [ "$v" -ge 1 ] || { echo "bench: knobs must be whole numbers >= 1 (got '$v')" >&2; exit 2; }
done

bash scripts/setup.sh
bash bench/setup.sh
echo "bench: building release skyfri and the bench_start example"
cargo build --release -p skyfri --bin skyfri -p skyfri-runtime --example bench_start
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SKYFRI="$TARGET_DIR/release/skyfri"

source "$ROOT/bench/lib.sh"

# ---------------------------------------------------------------- (a) start time
echo "bench: $STARTS deploys of a python3 function per isolation"
"$TARGET_DIR/release/examples/bench_start" "$STARTS" >"$WORK/start.txt"
read -r _ PLAIN_P50 PLAIN_P99 < <(grep '^plain ' "$WORK/start.txt")
read -r _ BOX_P50 BOX_P99 < <(grep '^sandboxed ' "$WORK/start.txt")

# ---------------------------------------------------------------- (b) noisy neighbour
PORT="$(free_port)"
mkdir -p "$WORK/stack/burner" "$WORK/stack/steady"
cat >"$WORK/stack/burner/handler.py" <<'PY'
import os
import time


def burn(until):
    while time.time() < until:
        pass


def handle(req):
    # N processes spinning: as much as N whole cores, if nothing holds them back.
    seconds, procs = (req or "1 1").split()
    until = time.time() + float(seconds)
    children = []
    for _ in range(int(procs)):
        pid = os.fork()
        if pid == 0:
            burn(until)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    return "burnt"
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
      exec_timeout: 300s
  steady:
    lang: python3
    handler: ./steady
YML
SKYFRI_ADMIN_PASSWORD="bench-$(python3 -c 'import secrets; print(secrets.token_hex(12))')" SKYFRI_LOG=warn \
  "$SKYFRI" up --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" -f "$WORK/stack/stack.yml" >"$WORK/skyfri.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PORT/function/steady" 60 || { echo "bench: skyfri did not serve steady" >&2; tail -n 30 "$WORK/skyfri.log" >&2; exit 1; }

p99_of() {   # p99_of LABEL: wrk against steady, p99 in µs
  timeout $((SECONDS_PER_RUN + 60)) wrk -t1 -c"$CONNS" -d"${SECONDS_PER_RUN}s" --latency \
    "http://127.0.0.1:$PORT/function/steady" >"$WORK/wrk-$1.txt"
  to_us "$(awk '$1 == "99%" {print $2}' "$WORK/wrk-$1.txt")"
}
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$PORT/function/steady" >/dev/null
ALONE="$(p99_of alone)"
curl -s -o /dev/null --max-time $((SECONDS_PER_RUN + 60)) -d "$((SECONDS_PER_RUN + 3)) $BURNERS" \
  "http://127.0.0.1:$PORT/function/burner" &
BURN_PID=$!
sleep 1
BESIDE="$(p99_of beside)"
wait "$BURN_PID" || true
RATIO="$(awk -v a="$BESIDE" -v b="$ALONE" 'BEGIN {printf "%.2f", a / b}')"
VERDICT="$(awk -v r="$RATIO" 'BEGIN {print (r <= 1.5) ? "PASS" : "FAIL"}')"

{
  echo "## skyfri isolation benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Machine: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sr)."
  echo "Isolation: $(grep '^isolation:' "$WORK/skyfri.log" | sed 's/^isolation: //')."
  echo
  echo "| replica start (deploy to ready, python3) | p50 (ms) | p99 (ms) |"
  echo "| --- | ---: | ---: |"
  echo "| plain process | $PLAIN_P50 | $PLAIN_P99 |"
  echo "| sandbox (bwrap + cgroups) | $BOX_P50 | $BOX_P99 |"
  echo
  echo "| steady under wrk -c$CONNS -d${SECONDS_PER_RUN}s | p99 (µs) |"
  echo "| --- | ---: |"
  echo "| alone | $ALONE |"
  echo "| beside burner ($BURNERS spinning processes, limits.cpu 500m) | $BESIDE |"
  echo
  echo "- noisy neighbour: p99 beside / alone = **${RATIO}x** (budget <= 1.5x): **$VERDICT**"
} >"$WORK/report.md"
echo
cat "$WORK/report.md"
mkdir -p bench/out
cp "$WORK/report.md" bench/out/isolation.md
if [ "$STRICT" = 1 ] && [ "$VERDICT" != PASS ]; then exit 1; fi
