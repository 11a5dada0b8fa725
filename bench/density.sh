#!/usr/bin/env bash
# Density (DESIGN budget): "1,000 deployed idle functions cost 0 replica processes and keep the
# platform under 100 MB RSS". Starts release `skyfri up` (free port, temporary data dir),
# deploys BENCH_FUNCTIONS trivial python3 functions that may scale to zero
# (`com.openfaas.scale.min: 0`, `initial-scale: 0`) with `skyfri deploy`, BENCH_BATCH per
# stack.yml, waits until they are idle, and reports: the replica processes left (skyfri's
# process tree less its stem cells, which are counted on their own), skyfri's RSS (VmRSS)
# before and after, and the deploy time. Prints a markdown table and writes it to
# bench/out/density.md.
#
# Knobs (env): BENCH_FUNCTIONS (1000), BENCH_BATCH (100) functions per `skyfri deploy`,
# BENCH_IDLE (10) seconds to wait once no replica is left before measuring, BENCH_READY_TIMEOUT
# (180) seconds for skyfri to come up, BENCH_STRICT=1 to exit 1 when the budget is missed,
# BENCH_SKYFRI_BIN to use a prebuilt skyfri, SKYFRI_LOG (warn) skyfri's log filter.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

FUNCTIONS="${BENCH_FUNCTIONS:-1000}"
BATCH="${BENCH_BATCH:-100}"
IDLE="${BENCH_IDLE:-10}"
READY_TIMEOUT="${BENCH_READY_TIMEOUT:-180}"
STRICT="${BENCH_STRICT:-0}"
source "$ROOT/bench/lib.sh"
whole_numbers 1 "$FUNCTIONS" "$BATCH" "$IDLE" "$READY_TIMEOUT"
[ "$FUNCTIONS" -le 10000 ] || { echo "bench: BENCH_FUNCTIONS must be 1..10000" >&2; exit 2; }
BUDGET_MB=100

# ---------------------------------------------------------------- prerequisites
if [ -f scripts/setup.sh ]; then bash scripts/setup.sh; fi   # python3, bwrap
release_skyfri
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 4096 2>/dev/null || true

# ---------------------------------------------------------------- processes
# skyfri's own processes: its direct children are replicas and stem cells (a sandbox, or the
# process itself without one). A stem cell's cgroup is named `cell-...` until it becomes a
# replica; on a host without cgroups there are no cells.
is_cell() {
  grep -q '/cell-[0-9a-f]*$' "/proc/$1/cgroup" 2>/dev/null
}
children_of_skyfri() {
  ps -e -o pid=,ppid= | awk -v p="$SKY_PID" '$2 == p {print $1}'
}
# count_processes: sets REPLICAS and CELLS (direct children of skyfri) and CELL_KIB (the
# resident memory of all the stem cells' processes).
count_processes() {
  local child pid kib
  REPLICAS=0 CELLS=0 CELL_KIB=0
  for child in $(children_of_skyfri); do
    if is_cell "$child"; then
      CELLS=$((CELLS + 1))
      for pid in "$child" $(descendants "$child"); do
        kib="$(rss_kib "$pid")"
        CELL_KIB=$((CELL_KIB + ${kib:-0}))
      done
    else
      REPLICAS=$((REPLICAS + 1))
    fi
  done
}
mb() {   # mb KIB: decimal megabytes, one decimal
  awk -v k="$1" 'BEGIN {printf "%.1f", k * 1024 / 1e6}'
}

# ---------------------------------------------------------------- skyfri, empty
start_skyfri "$READY_TIMEOUT"
echo "bench: skyfri ready on $SKY_URL (pid $SKY_PID)"
sleep 3   # the stem cells boot
count_processes
RSS_EMPTY="$(rss_kib "$SKY_PID")"
CELLS_EMPTY="$CELLS"
echo "bench: no functions: skyfri RSS $(mb "$RSS_EMPTY") MB, $CELLS stem cells, $REPLICAS other processes"

# ---------------------------------------------------------------- deploy
# Each function returns its own name: as many artefacts as functions, as real ones would be.
LABELS='    labels:
      com.openfaas.scale.min: "0"
    annotations:
      autoscaling.knative.dev/initial-scale: "0"'
mkdir -p "$WORK/stacks"
batches=0
for ((first = 1; first <= FUNCTIONS; first += BATCH)); do
  dir="$WORK/stacks/$batches"
  mkdir -p "$dir"
  {
    echo "version: 1.0"
    echo "provider:"
    echo "  name: openfaas"
    echo "  gateway: $SKY_URL"
    echo "functions:"
  } >"$dir/stack.yml"
  for ((i = first; i < first + BATCH && i <= FUNCTIONS; i++)); do
    name="$(printf 'idle-%05d' "$i")"
    mkdir -p "$dir/$name"
    printf 'def handle(req):\n    return "%s"\n' "$name" >"$dir/$name/handler.py"
    printf '  %s:\n    lang: python3\n    handler: ./%s\n    image: skyfri-bench/%s:latest\n%s\n' \
      "$name" "$name" "$name" "$LABELS" >>"$dir/stack.yml"
  done
  batches=$((batches + 1))
done

# While deploys run, the most replica processes seen at once (sampled every 0.2 s).
(
  peak=0
  while true; do
    count_processes
    [ "$REPLICAS" -gt "$peak" ] && peak="$REPLICAS" && echo "$peak" >"$WORK/peak"
    sleep 0.2
  done
) &
SAMPLER=$!
PIDS+=("$SAMPLER")
echo 0 >"$WORK/peak"

echo "bench: deploying $FUNCTIONS functions in $batches batches of up to $BATCH"
DEPLOY_START="$(date +%s.%N)"
for ((b = 0; b < batches; b++)); do
  t0="$(date +%s.%N)"
  skyfri_deploy "$WORK/stacks/$b" >"$WORK/deploy-$b.log" 2>&1 \
    || { tail -n 20 "$WORK/deploy-$b.log" >&2; fail "deploy of batch $b failed"; }
  echo "bench: batch $((b + 1))/$batches in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s, skyfri RSS $(mb "$(rss_kib "$SKY_PID")") MB"
done
DEPLOY_S="$(awk -v a="$DEPLOY_START" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')"
RSS_DEPLOYED="$(rss_kib "$SKY_PID")"

# ---------------------------------------------------------------- idle
# Replicas a deploy started (the trial run of a function deployed at zero) go; then quiet.
deadline=$((SECONDS + 120))
while count_processes && [ "$REPLICAS" -gt 0 ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
kill "$SAMPLER" 2>/dev/null || true
PEAK="$(cat "$WORK/peak")"
# What skyfri does while nothing happens: its CPU time over the idle wait.
IDLE_TICKS="$(cpu_ticks "$SKY_PID")"
sleep "$IDLE"
IDLE_TICKS=$(($(cpu_ticks "$SKY_PID") - IDLE_TICKS))
IDLE_CPU="$(awk -v t="$IDLE_TICKS" -v hz="$(getconf CLK_TCK)" -v s="$IDLE" 'BEGIN {printf "%.1f", t / hz / s * 100}')"
count_processes
RSS_IDLE="$(rss_kib "$SKY_PID")"
HWM="$(awk '/^VmHWM:/ {print $2}' "/proc/$SKY_PID/status")"
THREADS="$(awk '/^Threads:/ {print $2}' "/proc/$SKY_PID/status")"
FDS="$(find "/proc/$SKY_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)"
LISTED="$(curl -s -u "admin:$SKY_PASSWORD" "$SKY_URL/system/functions" \
  | python3 -c 'import json,sys; f=json.load(sys.stdin); print(len(f), sum(x.get("replicas", 0) for x in f))')"
read -r LISTED_N LISTED_REPLICAS <<<"$LISTED"

# One of them still answers (from zero), so the deploys were real.
LAST="$(printf 'idle-%05d' "$FUNCTIONS")"
ANSWER="$(curl -s --max-time 30 "$SKY_URL/function/$LAST" || true)"

# ---------------------------------------------------------------- report
VERDICT=PASS
[ "$REPLICAS" = 0 ] && [ "$LISTED_N" = "$FUNCTIONS" ] || VERDICT=FAIL
awk -v k="$RSS_IDLE" -v b="$BUDGET_MB" 'BEGIN {exit !(k * 1024 / 1e6 < b)}' || VERDICT=FAIL
[ "$ANSWER" = "$LAST" ] || VERDICT=FAIL
{
  echo "## skyfri density benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "$(machine_line)."
  commit_line
  echo "Isolation: $(grep -m1 '^isolation:' "$WORK/skyfri.log" | sed 's/^isolation: //' || true)."
  echo "Load: $FUNCTIONS python3 functions (scale min 0, initial-scale 0), $batches \`skyfri deploy\` of up to $BATCH, then ${IDLE}s idle."
  echo
  echo "| what | value |"
  echo "| --- | ---: |"
  echo "| skyfri RSS, no functions | $(mb "$RSS_EMPTY") MB |"
  echo "| skyfri RSS, right after the deploys | $(mb "$RSS_DEPLOYED") MB |"
  echo "| skyfri RSS, $FUNCTIONS idle functions | **$(mb "$RSS_IDLE") MB** |"
  echo "| skyfri peak RSS (VmHWM) | $(mb "$HWM") MB |"
  echo "| skyfri threads / open files | $THREADS / $FDS |"
  echo "| skyfri CPU while idle (${IDLE}s) | $IDLE_CPU % of a core |"
  echo "| replica processes, idle | **$REPLICAS** |"
  echo "| replica processes at once during the deploys, most | $PEAK |"
  echo "| stem cells (idle; before any function) | $CELLS ($CELLS_EMPTY), $(mb "$CELL_KIB") MB RSS in all |"
  echo "| functions listed / their replicas | $LISTED_N / $LISTED_REPLICAS |"
  echo "| deploy time | $DEPLOY_S s ($(awk -v s="$DEPLOY_S" -v n="$FUNCTIONS" 'BEGIN {printf "%.1f", s * 1000 / n}') ms a function) |"
  echo "| \`/function/$LAST\` from zero | $([ "$ANSWER" = "$LAST" ] && echo answered || echo "FAILED: ${ANSWER:0:80}") |"
  echo
  echo "- budget: 0 replica processes and skyfri under $BUDGET_MB MB RSS with $FUNCTIONS idle functions: **$VERDICT**"
} >"$WORK/report.md"
echo
cat "$WORK/report.md"
mkdir -p bench/out
cp "$WORK/report.md" bench/out/density.md
cp "$WORK/skyfri.log" bench/out/density-skyfri.log
echo
echo "bench: wrote bench/out/density.md (skyfri's log: bench/out/density-skyfri.log)"
if [ "$STRICT" = 1 ] && [ "$VERDICT" != PASS ]; then exit 1; fi
exit 0
