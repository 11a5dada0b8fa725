# Shared by the bench scripts: a work dir, background processes stopped on exit, free ports,
# waiting for HTTP, and wrk's latency units. Source it after `set -euo pipefail`.

WORK="$(mktemp -d "${TMPDIR:-/tmp}/skyfri-bench.XXXXXX")"
chmod 755 "$WORK"   # nginx workers may run as another user; they only need to traverse it
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # Give skyfri time to stop its function processes, then make sure everything is gone.
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL SECONDS: until URL answers 200 (with keep-alive off, one request per try).
wait_http() {
  local url="$1" deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)" = 200 ]; then return 0; fi
    sleep 0.2
  done
  return 1
}

# to_us VALUE: wrk latency ("95.00us", "2.65ms", "1.02s") -> microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") f = 1; else if (u == "ms") f = 1000; else if (u == "s") f = 1000000;
    else if (u == "m") f = 60000000; else { print "nan"; exit }
    printf "%.0f", n * f }'
}


# start_nginx UP_PORT [NAME]: nginx (2 workers) as a keep-alive reverse proxy to
# 127.0.0.1:UP_PORT, under $WORK/NAME (default nginx); sets NGX_PORT and NGX_PID (also added
# to PIDS). Like skyfri, it writes an access log line per request (JSON, buffered as skyfri's
# writer batches); BENCH_NGINX_ACCESS_LOG=off turns it off.
start_nginx() {
  local up_port="$1" nginx dir="$WORK/${2:-nginx}"
  nginx="$(command -v nginx || echo /usr/sbin/nginx)"
  NGX_PORT="$(free_port)"
  mkdir -p "$dir/tmp"
  chmod -R 755 "$dir"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  log_format json escape=json '{"time":"\$time_iso8601","call_id":"\$request_id","method":"\$request_method",'
    '"path":"\$request_uri","status":\$status,"duration_ms":\$request_time,"request_bytes":\$request_length,'
    '"response_bytes":\$bytes_sent,"client":"\$remote_addr"}';
  $([ "${BENCH_NGINX_ACCESS_LOG:-on}" = off ] && echo "access_log off;" || echo "access_log $dir/access.log json buffer=64k flush=1s;")
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  upstream bench_upstream {
    server 127.0.0.1:$up_port;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  "$nginx" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
  NGX_PID=$!
  PIDS+=("$NGX_PID")
}

# replica_port PARENT_PID COMMAND: the TCP port the one process named COMMAND below PARENT_PID
# (a replica skyfri started) listens on; fails unless there is exactly one such port.
replica_port() {
  local parent="$1" name="$2" pid ports=()
  for pid in $(pgrep -x "$name" || true); do
    local p="$pid"
    while [ "$p" -gt 1 ] && [ "$p" != "$parent" ]; do
      p="$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null || echo 1)"
    done
    [ "$p" = "$parent" ] || continue
    ports+=($(ss -Hltnp 2>/dev/null | awk -v pid="pid=$pid," '$0 ~ pid {n = split($4, a, ":"); print a[n]}'))
  done
  [ "${#ports[@]}" = 1 ] || return 1
  echo "${ports[0]}"
}

# target_dir: cargo's target directory ($CARGO_TARGET_DIR, cargo's own, or ./target).
target_dir() {
  echo "${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo "$ROOT/target")}"
}

# release_skyfri: sets SKYFRI to $BENCH_SKYFRI_BIN, or to the release build of skyfri (built now).
release_skyfri() {
  if [ -n "${BENCH_SKYFRI_BIN:-}" ]; then
    SKYFRI="$(realpath "$BENCH_SKYFRI_BIN")"
  else
    echo "bench: building release skyfri"
    cargo build --release -p skyfri --bin skyfri
    SKYFRI="$(target_dir)/release/skyfri"
  fi
  [ -x "$SKYFRI" ] || { echo "bench: skyfri binary not found: $SKYFRI" >&2; exit 1; }
}

# fail MESSAGE: the message and the tail of skyfri's log (SKY_LOG: the last one started, if
# any), exit 1 (cleanup stops everything).
fail() {
  echo "bench: $1" >&2
  if [ -n "${SKY_LOG:-}" ] && [ -f "$SKY_LOG" ]; then
    echo "bench: tail of skyfri's log:" >&2
    tail -n 40 "$SKY_LOG" >&2 || true
  fi
  exit 1
}

# start_skyfri SECONDS [ARGS...]: `$SKYFRI up` on a free port of 127.0.0.1 with a data dir under
# $WORK, no dashboard, SKYFRI_LOG (default warn) and ARGS, logging to $WORK/skyfri.log; waits
# SECONDS for it to print `ready`. Sets SKY_PID, SKY_URL and SKY_PASSWORD (the admin's).
start_skyfri() {
  local timeout="$1" port deadline
  shift
  port="$(free_port)"
  SKY_URL="http://127.0.0.1:$port"
  SKY_PASSWORD="bench-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
  mkdir -p "$WORK/skyfri-data"
  SKY_LOG="$WORK/skyfri.log"
  SKYFRI_ADMIN_PASSWORD="$SKY_PASSWORD" SKYFRI_LOG="${SKYFRI_LOG:-warn}" \
    "$SKYFRI" up --listen "127.0.0.1:$port" --ui-listen off --data-dir "$WORK/skyfri-data" "$@" \
    >"$WORK/skyfri.log" 2>&1 &
  SKY_PID=$!
  PIDS+=("$SKY_PID")
  deadline=$((SECONDS + timeout))
  until grep -qx ready "$WORK/skyfri.log" 2>/dev/null; do
    kill -0 "$SKY_PID" 2>/dev/null || fail "skyfri exited before it was ready"
    [ "$SECONDS" -lt "$deadline" ] || fail "skyfri not ready within ${timeout}s"
    sleep 0.1
  done
}

# skyfri_deploy DIR: `skyfri deploy -f stack.yml` in DIR against the skyfri of start_skyfri.
skyfri_deploy() {
  (cd "$1" && SKYFRI_PASSWORD="$SKY_PASSWORD" timeout 600 "$SKYFRI" deploy -f stack.yml --gateway "$SKY_URL")
}

# rss_kib PID: the process's resident memory (VmRSS) in KiB, empty when it is gone.
rss_kib() {
  awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true
}

# cpu_ticks PID...: user + system CPU time the processes used so far, in clock ticks
# (getconf CLK_TCK a second), from /proc/PID/stat; a process that is gone counts 0.
cpu_ticks() {
  local pid total=0 t
  for pid in "$@"; do
    # The command name (field 2) may hold spaces: read the fields after its closing paren.
    t="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}')" || t=0
    total=$((total + ${t:-0}))
  done
  echo "$total"
}

# descendants PID: the process ids below PID (children, their children, ...), one a line.
descendants() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END {
      found[root] = 1
      do {
        more = 0
        for (p in parent) if (!(p in found) && (parent[p] in found)) { found[p] = 1; more = 1; print p }
      } while (more)
    }'
}

# run_wrk KEY URL [PID...]: WARMUP seconds of wrk (not measured), then SECONDS_PER_RUN measured
# seconds, with THREADS threads and CONNS connections; sets RPS, P50, P99 (µs), ERRS (non-2xx
# answers, socket errors and timeouts) and REQS (requests done) at KEY, RPS empty when wrk
# failed. With PIDs, also CPU_US at KEY: the CPU time (user + system) those processes and
# all below them used during the measured run, in µs per request.
declare -A RPS P50 P99 ERRS REQS CPU_US
run_wrk() {
  local key="$1" url="$2" out="$WORK/wrk-$1.txt" tck before after
  shift 2
  if [ "$WARMUP" -gt 0 ]; then
    timeout $((WARMUP + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "$url" >/dev/null 2>&1 || true
  fi
  echo "bench: $key: wrk -t$THREADS -c$CONNS -d${SECONDS_PER_RUN}s --latency $url"
  [ $# -gt 0 ] && before="$(cpu_ticks "$@" $(for p in "$@"; do descendants "$p"; done))"
  if ! timeout $((SECONDS_PER_RUN + 60)) wrk -t"$THREADS" -c"$CONNS" -d"${SECONDS_PER_RUN}s" --latency "$url" >"$out" 2>&1; then
    echo "bench: wrk failed for $key" >&2; cat "$out" >&2 || true
    RPS[$key]=""; return
  fi
  [ $# -gt 0 ] && after="$(cpu_ticks "$@" $(for p in "$@"; do descendants "$p"; done))"
  RPS[$key]="$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")"
  REQS[$key]="$(awk '/ requests in / {print $1}' "$out")"
  P50[$key]="$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")"
  P99[$key]="$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")"
  # Non-2xx/3xx answers, socket errors and timeouts all count as errors.
  ERRS[$key]="$(awk '/Non-2xx or 3xx responses:/ {e += $NF}
    /Socket errors:/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) e += $i}
    END {print e + 0}' "$out")"
  if [ $# -gt 0 ]; then
    tck="$(getconf CLK_TCK)"
    CPU_US[$key]="$(awk -v t=$((after - before)) -v hz="$tck" -v n="${REQS[$key]}" \
      'BEGIN {printf "%.0f", (n > 0 ? t / hz * 1e6 / n : 0)}')"
  fi
}

# whole_numbers MIN VALUE...: exits 2 unless every VALUE is a whole number >= MIN (the knobs'
# check of every bench script).
whole_numbers() {
  local min="$1" v
  shift
  for v in "$@"; do
    [[ "$v" =~ ^[0-9]+$ ]] && [ "$v" -ge "$min" ] \
      || { echo "bench: knobs must be whole numbers >= $min (got '$v')" >&2; exit 2; }
  done
}

# wrk_knobs: SECONDS_PER_RUN, WARMUP and THREADS from BENCH_SECONDS (10, 1..600), BENCH_WARMUP
# (2) and BENCH_THREADS (1); exits 2 on a value that is not a whole number.
wrk_knobs() {
  SECONDS_PER_RUN="${BENCH_SECONDS:-10}"
  WARMUP="${BENCH_WARMUP:-2}"
  THREADS="${BENCH_THREADS:-1}"
  whole_numbers 0 "$SECONDS_PER_RUN" "$WARMUP" "$THREADS"
  [ "$SECONDS_PER_RUN" -ge 1 ] && [ "$SECONDS_PER_RUN" -le 600 ] || { echo "bench: BENCH_SECONDS must be 1..600" >&2; exit 2; }
}

# machine_line, commit_line: what a report says of where and what it measured (the machine's
# line without its full stop, for callers that add to it).
machine_line() {
  echo "Machine: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sr)"
}
commit_line() {
  echo "Commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (dirty)')."
}
