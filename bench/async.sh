#!/usr/bin/env bash
# Async invocations, measured (issue 5's bench):
#  (a) the embedded queue raw: durable enqueues/s (`skyfri-queue --example enqueue_rate`), with
#      random (v4) and time-ordered (v7, what the gateway generates) ids; budget >= 20,000/s;
#  (b) through the gateway: wrk POSTing /async-function/sink as fast as it can on keep-alive
#      connections (no X-Call-Id: the gateway makes the ids) -> accepted calls/s;
#  (c) end to end: CALLS async calls of a trivial python3 function (`tick`, 20 at once), time
#      from the first POST to the last callback (to a receiver in bench/async.py) -> calls/s;
#  (d) only with BENCH_NATS_URL: (b) and (c) again with `skyfri up --queue $BENCH_NATS_URL`,
#      and the raw JetStream publish-ack rate (bench/async.py speaks the NATS protocol).
# Prints a markdown table and writes it to bench/out/async.md.
#
# Knobs (env): BENCH_ENQUEUE_CALLS (200000) and BENCH_ENQUEUE_TASKS (64) for (a);
# BENCH_SECONDS (10) and BENCH_CONNECTIONS (16) for (b); BENCH_ASYNC_CALLS (10000) and
# BENCH_ASYNC_CONNECTIONS (8) for (c); BENCH_NATS_URL (unset: no JetStream rows);
# BENCH_NATS_MESSAGES (50000); BENCH_READY_TIMEOUT (180); BENCH_STRICT=1 to exit 1 when the
# budget is missed; BENCH_SKYFRI_BIN and BENCH_ENQUEUE_BIN to use prebuilt binaries;
# SKYFRI_LOG (info) skyfri's log filter.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

ENQUEUE_CALLS="${BENCH_ENQUEUE_CALLS:-200000}"
ENQUEUE_TASKS="${BENCH_ENQUEUE_TASKS:-64}"
SECONDS_PER_RUN="${BENCH_SECONDS:-10}"
CONNS="${BENCH_CONNECTIONS:-16}"
CALLS="${BENCH_ASYNC_CALLS:-10000}"
CALL_CONNS="${BENCH_ASYNC_CONNECTIONS:-8}"
NATS_MESSAGES="${BENCH_NATS_MESSAGES:-50000}"
READY_TIMEOUT="${BENCH_READY_TIMEOUT:-180}"
STRICT="${BENCH_STRICT:-0}"
NATS_URL="${BENCH_NATS_URL:-}"
source "$ROOT/bench/lib.sh"
whole_numbers 1 "$ENQUEUE_CALLS" "$ENQUEUE_TASKS" "$SECONDS_PER_RUN" "$CONNS" "$CALLS" "$CALL_CONNS" "$NATS_MESSAGES" "$READY_TIMEOUT"
[ "$SECONDS_PER_RUN" -le 600 ] || { echo "bench: BENCH_SECONDS must be 1..600" >&2; exit 2; }
[ "$CALLS" -le 1000000 ] && [ "$ENQUEUE_CALLS" -le 10000000 ] || { echo "bench: too many calls" >&2; exit 2; }
[ "$ENQUEUE_TASKS" -le "$ENQUEUE_CALLS" ] || { echo "bench: BENCH_ENQUEUE_TASKS > BENCH_ENQUEUE_CALLS" >&2; exit 2; }

# ---------------------------------------------------------------- prerequisites
if [ -f scripts/setup.sh ]; then bash scripts/setup.sh; fi   # python3, bwrap
command -v wrk >/dev/null || bash bench/setup.sh              # wrk
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] && command -v wrk >/dev/null || { echo "bench: /usr/bin/python3 and wrk are needed" >&2; exit 1; }

TARGET_DIR="$(target_dir)"
if [ -n "${BENCH_SKYFRI_BIN:-}" ]; then
  SKYFRI="$(realpath "$BENCH_SKYFRI_BIN")"
else
  echo "bench: building release skyfri"
  cargo build --release -p skyfri --bin skyfri
  SKYFRI="$TARGET_DIR/release/skyfri"
fi
if [ -n "${BENCH_ENQUEUE_BIN:-}" ]; then
  ENQUEUE="$(realpath "$BENCH_ENQUEUE_BIN")"
else
  echo "bench: building the enqueue_rate example (release)"
  cargo build --release -p skyfri-queue --example enqueue_rate
  ENQUEUE="$TARGET_DIR/release/examples/enqueue_rate"
fi
[ -x "$SKYFRI" ] && [ -x "$ENQUEUE" ] || { echo "bench: binaries not found: $SKYFRI $ENQUEUE" >&2; exit 1; }

ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 4096 2>/dev/null || true
UPTIME_BEFORE="$(uptime)"

# ---------------------------------------------------------------- (a) the embedded queue, raw
for ids in v4 v7; do
  flag=""; [ "$ids" = v7 ] && flag=ordered
  line="$(cd "$WORK" && timeout 600 "$ENQUEUE" "$ENQUEUE_TASKS" "$ENQUEUE_CALLS" $flag)" \
    || { echo "bench: enqueue_rate failed" >&2; exit 1; }
  echo "bench: $line"
  rate="$(sed -n 's/.*: \([0-9]*\) calls\/s$/\1/p' <<<"$line")"
  [ -n "$rate" ] || { echo "bench: unreadable enqueue_rate output: $line" >&2; exit 1; }
  echo "{\"rate\": $rate, \"tasks\": $ENQUEUE_TASKS, \"calls\": $ENQUEUE_CALLS}" >"$WORK/enqueue-$ids.json"
done

# ---------------------------------------------------------------- the stack
mkdir -p "$WORK/stack/tick" "$WORK/stack/sink"
for f in tick sink; do
  printf 'def handle(req):\n    return "ok"\n' >"$WORK/stack/$f/handler.py"
done
cat >"$WORK/stack/stack.yml" <<'YML'
version: 1.0
provider:
  name: openfaas
  gateway: http://127.0.0.1:8080
functions:
  # (c): 20 async calls at once.
  tick:
    lang: python3
    handler: ./tick
    image: skyfri-bench/tick:latest
    annotations:
      com.skyfri.async.concurrency: "20"
  # (b): what is accepted piles up; one call at a time keeps its runs out of the way.
  sink:
    lang: python3
    handler: ./sink
    image: skyfri-bench/sink:latest
    annotations:
      com.skyfri.async.concurrency: "1"
YML
cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
LUA
PASSWORD="bench-$("$PYTHON" -c 'import secrets; print(secrets.token_hex(12))')"

# start_instance NAME [up args...]: skyfri on a free port in $WORK/NAME, the stack deployed
# (unlike lib.sh's start_skyfri: several instances, and a JetStream one may fail softly).
# Sets URL, SKY_LOG and SKY_PID; returns 1 (with WHY) when skyfri does not come up.
start_instance() {
  local name="$1"; shift
  local port; port="$(free_port)"
  URL="http://127.0.0.1:$port"
  SKY_LOG="$WORK/$name.log"
  mkdir -p "$WORK/$name"
  SKYFRI_ADMIN_PASSWORD="$PASSWORD" SKYFRI_LOG="${SKYFRI_LOG:-info}" \
    "$SKYFRI" up --listen "127.0.0.1:$port" --ui-listen off --data-dir "$WORK/$name/data" "$@" >"$SKY_LOG" 2>&1 &
  SKY_PID=$!
  PIDS+=("$SKY_PID")
  local deadline=$((SECONDS + READY_TIMEOUT))
  until grep -qx ready "$SKY_LOG" 2>/dev/null; do
    if ! kill -0 "$SKY_PID" 2>/dev/null; then WHY="skyfri exited: $(tail -n 1 "$SKY_LOG")"; return 1; fi
    if [ "$SECONDS" -ge "$deadline" ]; then WHY="skyfri not ready within ${READY_TIMEOUT}s"; return 1; fi
    sleep 0.1
  done
  (cd "$WORK/stack" && SKYFRI_PASSWORD="$PASSWORD" timeout 300 "$SKYFRI" deploy -f stack.yml --gateway "$URL") \
    >"$WORK/$name-deploy.log" 2>&1 || { cat "$WORK/$name-deploy.log" >&2; fail "deploy failed"; }
}

stop_skyfri() {
  kill -TERM "$SKY_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$SKY_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SKY_PID" 2>/dev/null || true
  wait "$SKY_PID" 2>/dev/null || true
}

# measure PREFIX: (c) then (b) against the running skyfri (in this order: (b) leaves a backlog).
measure() {
  local prefix="$1"
  echo "bench: ${prefix:-embedded }(c) $CALLS calls end to end over $CALL_CONNS connections"
  timeout 900 "$PYTHON" "$ROOT/bench/async.py" e2e "$URL" tick "$CALLS" "$CALL_CONNS" \
    "$WORK/${prefix}e2e.json" || fail "end-to-end run failed"
  echo "bench: ${prefix:-embedded }(b) wrk -t1 -c$CONNS -d${SECONDS_PER_RUN}s POST /async-function/sink"
  timeout 60 wrk -t1 -c"$CONNS" -d2s -s "$WORK/post.lua" "$URL/async-function/sink" >/dev/null
  timeout $((SECONDS_PER_RUN + 60)) wrk -t1 -c"$CONNS" -d"${SECONDS_PER_RUN}s" --latency \
    -s "$WORK/post.lua" "$URL/async-function/sink" >"$WORK/${prefix}wrk.txt" || fail "wrk failed"
  local rps p50 p99 non2xx sock
  rps="$(awk '/^Requests\/sec:/ {print $2}' "$WORK/${prefix}wrk.txt")"
  p50="$(to_us "$(awk '$1 == "50%" {print $2}' "$WORK/${prefix}wrk.txt")")"
  p99="$(to_us "$(awk '$1 == "99%" {print $2}' "$WORK/${prefix}wrk.txt")")"
  non2xx="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$WORK/${prefix}wrk.txt")"
  sock="$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$WORK/${prefix}wrk.txt")"
  echo "{\"rate\": ${rps:-0}, \"p50_us\": ${p50:-0}, \"p99_us\": ${p99:-0}, \"errors\": $((${non2xx:-0} + ${sock:-0})), \"connections\": $CONNS, \"seconds\": $SECONDS_PER_RUN}" \
    >"$WORK/${prefix}accept.json"
}

# ---------------------------------------------------------------- (b), (c): embedded
start_instance embedded || fail "$WHY"
echo "bench: skyfri ready on $URL (embedded queue)"
measure ""
kill -0 "$SKY_PID" 2>/dev/null || fail "skyfri died during the run"
UPTIME_AFTER="$(uptime)"
WARNINGS="$(grep -cE ' (WARN|ERROR) ' "$SKY_LOG" || true)"
mkdir -p bench/out
cp "$SKY_LOG" bench/out/async-skyfri.log
stop_skyfri

# ---------------------------------------------------------------- (d): JetStream, optional
if [ -n "$NATS_URL" ]; then
  if start_instance jetstream --queue "$NATS_URL"; then
    echo "bench: skyfri ready on $URL (queue $NATS_URL)"
    measure "jetstream-"
    stop_skyfri
  else
    echo "bench: JetStream rows skipped: $WHY"
    "$PYTHON" -c 'import json,sys; json.dump({"why": sys.argv[1]}, open(sys.argv[2], "w"))' \
      "$WHY" "$WORK/jetstream-skipped.json"
    stop_skyfri
  fi
  echo "bench: raw JetStream publish-ack rate, $NATS_MESSAGES messages"
  timeout 300 "$PYTHON" "$ROOT/bench/async.py" nats "$NATS_URL" "$NATS_MESSAGES" "$WORK/nats.json" \
    || "$PYTHON" -c 'import json,sys; json.dump({"why": "publish failed (see above)"}, open(sys.argv[1], "w"))' "$WORK/nats-skipped.json"
else
  why="set BENCH_NATS_URL=nats://HOST:PORT to run"
  for f in jetstream-skipped nats-skipped; do
    "$PYTHON" -c 'import json,sys; json.dump({"why": sys.argv[1]}, open(sys.argv[2], "w"))' "$why" "$WORK/$f.json"
  done
fi

# ---------------------------------------------------------------- report
"$PYTHON" "$ROOT/bench/async.py" report "$WORK"
{
  echo "## skyfri async benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "$(machine_line)."
  echo "Load: before \`${UPTIME_BEFORE#*load average: }\`, after the embedded runs \`${UPTIME_AFTER#*load average: }\` (uptime's 1/5/15 min)."
  commit_line
  echo
  cat "$WORK/report.md"
  echo
  echo "skyfri log (embedded run): $WARNINGS warning/error lines (filter ${SKYFRI_LOG:-info})."
} >"$WORK/full.md"
echo
cat "$WORK/full.md"
if [ "$WARNINGS" != 0 ]; then
  echo
  echo "bench: last warnings/errors in skyfri's log:"
  grep -E ' (WARN|ERROR) ' bench/out/async-skyfri.log | tail -n 10
fi
cp "$WORK/full.md" bench/out/async.md
echo
echo "bench: wrote bench/out/async.md (skyfri's log: bench/out/async-skyfri.log)"
if [ "$STRICT" = 1 ] && [ "$(cat "$WORK/verdict")" != PASS ]; then exit 1; fi
exit 0
