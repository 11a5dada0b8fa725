#!/usr/bin/env bash
# Proxy-overhead benchmark: wrk against a native upstream directly, through nginx, through
# skyfri (`http` template), and a skyfri `python3` function. The budget compares skyfri with
# nginx proxying to the same upstream: the replica skyfri runs (one, sandboxed). Prints a markdown table and the
# DESIGN budget check (skyfri throughput >= nginx, skyfri added p50 <= 50 µs), and writes it to
# bench/out/latest.md. Everything listens on 127.0.0.1 only and every run is bounded in time.
#
# Knobs (env): BENCH_SECONDS (10) per target, BENCH_WARMUP (2) seconds of warm-up per target,
# BENCH_THREADS (1) and BENCH_CONNECTIONS (16) for wrk, BENCH_STRICT=1 to exit 1 when the budget
# is missed, BENCH_READY_TIMEOUT (180) seconds to wait for skyfri to deploy the stack,
# BENCH_SKYFRI_BIN + BENCH_UPSTREAM_BIN to use prebuilt binaries instead of building,
# BENCH_UNLOADED=0 to skip the unloaded (one connection) runs that the added p50 is read from,
# BENCH_ROUNDS (5) alternating rounds of the budget's pair (nginx and skyfri before the replica),
# BENCH_NGINX_ACCESS_LOG=off for nginx without its access log.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

source "$ROOT/bench/lib.sh"
wrk_knobs
CONNS="${BENCH_CONNECTIONS:-16}"
STRICT="${BENCH_STRICT:-0}"
READY_TIMEOUT="${BENCH_READY_TIMEOUT:-180}"
UNLOADED="${BENCH_UNLOADED:-1}"
ROUNDS="${BENCH_ROUNDS:-5}"
whole_numbers 1 "$CONNS" "$READY_TIMEOUT" "$ROUNDS"
whole_numbers 0 "$UNLOADED"

# ---------------------------------------------------------------- prerequisites
if [ -f scripts/setup.sh ]; then bash scripts/setup.sh; fi   # python3, bwrap, ... for skyfri
bash bench/setup.sh                                          # nginx, wrk, curl
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
command -v wrk >/dev/null && [ -x "$NGINX" ] || { echo "bench: wrk or nginx missing" >&2; exit 1; }

if [ -n "${BENCH_SKYFRI_BIN:-}" ] && [ -n "${BENCH_UPSTREAM_BIN:-}" ]; then
  # Prebuilt binaries (e.g. to compare two builds): no cargo build.
  SKYFRI="$(realpath "$BENCH_SKYFRI_BIN")"
  UPSTREAM_BIN="$(realpath "$BENCH_UPSTREAM_BIN")"
else
  echo "bench: building release skyfri and the bench_upstream example"
  cargo build --release -p skyfri --bin skyfri --example bench_upstream
  TARGET_DIR="$(target_dir)"
  SKYFRI="$TARGET_DIR/release/skyfri"
  UPSTREAM_BIN="$TARGET_DIR/release/examples/bench_upstream"
fi
[ -x "$SKYFRI" ] && [ -x "$UPSTREAM_BIN" ] || { echo "bench: built binaries not found under $TARGET_DIR" >&2; exit 1; }

# ---------------------------------------------------------------- processes

# (a) the upstream, directly
UP_PORT="$(free_port)"
PORT="$UP_PORT" "$UPSTREAM_BIN" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)

# (b) nginx -> upstream, keep-alive both sides
start_nginx "$UP_PORT"

# (c) skyfri with an `http` function (the same upstream binary) and a `python3` function
SKY_PORT="$(free_port)"
mkdir -p "$WORK/stack/upstream" "$WORK/stack/hello" "$WORK/skyfri-data"
# The binary goes into the artefact: a sandboxed replica sees nothing of the host's build tree.
cp "$UPSTREAM_BIN" "$WORK/stack/upstream/bench_upstream"
cat >"$WORK/stack/hello/handler.py" <<'EOF'
def handle(req):
    return "ok"
EOF
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
  hello:
    lang: python3
    handler: ./hello
    image: skyfri-bench/hello:latest
EOF
SKYFRI_ADMIN_PASSWORD="bench-$(python3 -c 'import secrets; print(secrets.token_hex(12))')" \
SKYFRI_LOG="${SKYFRI_LOG:-warn}" \
  "$SKYFRI" up --listen "127.0.0.1:$SKY_PORT" --ui-listen off --data-dir "$WORK/skyfri-data" -f "$WORK/stack/stack.yml" \
  >"$WORK/skyfri.log" 2>&1 &
PIDS+=($!)
SKY_PID=$!

wait_http "http://127.0.0.1:$UP_PORT/" 30 || { echo "bench: upstream did not start" >&2; cat "$WORK/upstream.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$NGX_PORT/" 30 || { echo "bench: nginx did not start" >&2; cat "$WORK/nginx/error.log" "$WORK/nginx/stdout.log" >&2 || true; exit 1; }

SKY_OK=1
deadline=$((SECONDS + READY_TIMEOUT))
until grep -qx ready "$WORK/skyfri.log" 2>/dev/null; do
  if ! kill -0 "$SKY_PID" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then SKY_OK=0; break; fi
  sleep 0.2
done
SKY_UP_OK=0 SKY_PY_OK=0
if [ "$SKY_OK" = 1 ]; then
  wait_http "http://127.0.0.1:$SKY_PORT/function/upstream" 60 && SKY_UP_OK=1
  wait_http "http://127.0.0.1:$SKY_PORT/function/hello" 60 && SKY_PY_OK=1
fi
if [ "$SKY_OK" = 0 ] || [ "$SKY_UP_OK" = 0 ] || [ "$SKY_PY_OK" = 0 ]; then
  echo "bench: skyfri not (fully) serving: ready=$SKY_OK upstream=$SKY_UP_OK hello=$SKY_PY_OK; its log:" >&2
  tail -n 40 "$WORK/skyfri.log" >&2 || true
fi

# (d) nginx -> the replica skyfri runs for `upstream` (the same upstream as skyfri's row: same
# sandbox and cgroup, which cost any proxy in front of it some throughput)
REPLICA_OK=0
if [ "$SKY_UP_OK" = 1 ] && REPLICA_PORT="$(replica_port "$SKY_PID" bench_upstream)"; then
  DIRECT_NGX_PORT="$NGX_PORT"
  start_nginx "$REPLICA_PORT" nginx-replica
  REPLICA_NGX_PORT="$NGX_PORT"
  NGX_PORT="$DIRECT_NGX_PORT"
  wait_http "http://127.0.0.1:$REPLICA_NGX_PORT/" 30 && REPLICA_OK=1
fi
[ "$SKY_UP_OK" = 0 ] || [ "$REPLICA_OK" = 1 ] \
  || echo "bench: cannot put nginx in front of skyfri's replica: the budget is checked against nginx -> the direct upstream" >&2

# ---------------------------------------------------------------- load
run_wrk direct       "http://127.0.0.1:$UP_PORT/"
run_wrk nginx        "http://127.0.0.1:$NGX_PORT/"
# The budget's pair, nginx -> the replica and skyfri -> the replica, in ROUNDS alternating
# rounds (this VM drifts by more than the difference between them over a minute); each row is
# the mean req/s of its rounds, the median p50, the highest p99, the sum of errors.
combine() {   # combine KEY: KEY's row from KEY_1 .. KEY_ROUNDS
  local k="$1" r rps=() p50=() p99=() errs=0
  for r in $(seq 1 "$ROUNDS"); do
    [ -n "${RPS[${k}_$r]:-}" ] || return 0
    rps+=("${RPS[${k}_$r]}"); p50+=("${P50[${k}_$r]}"); p99+=("${P99[${k}_$r]}"); errs=$((errs + ${ERRS[${k}_$r]}))
  done
  RPS[$k]="$(printf '%s\n' "${rps[@]}" | awk '{s += $1} END {printf "%.0f", s / NR}')"
  P50[$k]="$(printf '%s\n' "${p50[@]}" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')"
  P99[$k]="$(printf '%s\n' "${p99[@]}" | sort -n | tail -n 1)"
  ERRS[$k]="$errs"
  EACH[$k]="$(IFS=/; echo "${rps[*]}")"
}
declare -A EACH
for r in $(seq 1 "$ROUNDS"); do
  pair=(nginx_replica skyfri_http)
  [ $((r % 2)) = 0 ] && pair=(skyfri_http nginx_replica)
  for k in "${pair[@]}"; do
    case "$k" in
      nginx_replica) [ "$REPLICA_OK" = 1 ] && run_wrk "${k}_$r" "http://127.0.0.1:$REPLICA_NGX_PORT/" ;;
      skyfri_http) [ "$SKY_UP_OK" = 1 ] && run_wrk "${k}_$r" "http://127.0.0.1:$SKY_PORT/function/upstream" ;;
    esac
  done
done
combine nginx_replica
combine skyfri_http
[ "$SKY_PY_OK" = 1 ] && run_wrk skyfri_py    "http://127.0.0.1:$SKY_PORT/function/hello"
# Unloaded: one connection, one call at a time. Under load the p50 is mostly queueing (16
# calls wait for 2 cores); with one call in flight it is what the hop itself adds.
if [ "$UNLOADED" = 1 ]; then
  THREADS=1 CONNS=1 run_wrk direct_c1      "http://127.0.0.1:$UP_PORT/"
  THREADS=1 CONNS=1 run_wrk nginx_c1       "http://127.0.0.1:$NGX_PORT/"
  [ "$SKY_UP_OK" = 1 ] && THREADS=1 CONNS=1 run_wrk skyfri_http_c1 "http://127.0.0.1:$SKY_PORT/function/upstream"
fi

# ---------------------------------------------------------------- report
row() {   # row KEY LABEL
  local k="$1"
  if [ -n "${RPS[$k]:-}" ]; then
    printf '| %s | %s | %s | %s | %s |\n' "$2" "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}" "${ERRS[$k]}"
  else
    printf '| %s | n/a | n/a | n/a | n/a |\n' "$2"
  fi
}
VERDICT=0
report() {
  echo "## skyfri proxy benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "$(machine_line)."
  commit_line
  echo "Load: wrk -t$THREADS -c$CONNS -d${SECONDS_PER_RUN}s --latency (after ${WARMUP}s warm-up), all on 127.0.0.1; nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), worker_processes 2, upstream keepalive 64, access log ${BENCH_NGINX_ACCESS_LOG:-on} (JSON lines, buffer=64k; skyfri: its access log, auth and metrics as configured by default)."
  echo
  echo "| target | req/s | p50 (µs) | p99 (µs) | errors |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  row direct      "upstream (direct)"
  row nginx       "nginx -> upstream"
  row nginx_replica "nginx -> skyfri's replica of upstream (the same upstream as skyfri's)"
  row skyfri_http "skyfri -> upstream (/function/upstream, http)"
  row skyfri_py   "skyfri -> python3 (/function/hello)"
  if [ "$UNLOADED" = 1 ]; then
    row direct_c1      "upstream (direct), unloaded (-c1)"
    row nginx_c1       "nginx -> upstream, unloaded (-c1)"
    row skyfri_http_c1 "skyfri -> upstream, unloaded (-c1)"
  fi
  echo
  if [ -n "${RPS[skyfri_http]:-}" ] && [ -n "${RPS[nginx]:-}" ] && [ -n "${RPS[direct]:-}" ]; then
    # DESIGN: "throughput through skyfri >= nginx reverse proxy to the same upstream".
    local ref_key=nginx ref_how="nginx -> the direct upstream: no replica to put nginx in front of"
    if [ -n "${RPS[nginx_replica]:-}" ]; then ref_key=nginx_replica ref_how="nginx -> the same replica"; fi
    ratio="$(awk -v a="${RPS[skyfri_http]}" -v b="${RPS[$ref_key]}" 'BEGIN {printf "%.2f", a / b}')"
    direct_ratio="$(awk -v a="${RPS[skyfri_http]}" -v b="${RPS[nginx]}" 'BEGIN {printf "%.2f", a / b}')"
    # The added p50 is read unloaded (one connection) when measured: under load it is queueing.
    local lat_key=skyfri_http base_key=direct ngx_key=nginx lat_how="at -c$CONNS"
    if [ "$UNLOADED" = 1 ] && [ -n "${RPS[skyfri_http_c1]:-}" ] && [ -n "${RPS[direct_c1]:-}" ] && [ -n "${RPS[nginx_c1]:-}" ]; then
      lat_key=skyfri_http_c1 base_key=direct_c1 ngx_key=nginx_c1 lat_how="unloaded, -c1"
    fi
    added="$(awk -v a="${P50[$lat_key]}" -v b="${P50[$base_key]}" 'BEGIN {printf "%d", a - b}')"
    nginx_added="$(awk -v a="${P50[$ngx_key]}" -v b="${P50[$base_key]}" 'BEGIN {printf "%d", a - b}')"
    loaded_added="$(awk -v a="${P50[skyfri_http]}" -v b="${P50[direct]}" 'BEGIN {printf "%d", a - b}')"
    loaded_nginx="$(awk -v a="${P50[nginx]}" -v b="${P50[direct]}" 'BEGIN {printf "%d", a - b}')"
    tp_ok="$(awk -v r="$ratio" 'BEGIN {print (r >= 1.0) ? "PASS" : "FAIL"}')"
    lat_ok="$([ "$added" -le 50 ] && echo PASS || echo FAIL)"
    err_ok="$([ "${ERRS[skyfri_http]}" = 0 ] && echo PASS || echo FAIL)"
    echo "- skyfri/nginx throughput ($ref_how): **${ratio}x** (budget >= 1.00x): **$tp_ok**"
    echo "- skyfri/nginx throughput, nginx to the unsandboxed upstream: ${direct_ratio}x"
    [ -z "${EACH[skyfri_http]:-}" ] || echo "- req/s of each round: nginx -> the replica ${EACH[nginx_replica]:-n/a}, skyfri ${EACH[skyfri_http]}"
    echo "- skyfri added p50 over direct ($lat_how): **${added} µs** (budget <= 50 µs; nginx adds ${nginx_added} µs): **$lat_ok**"
    [ "$lat_key" = skyfri_http ] || echo "- added p50 at -c$CONNS (mostly queueing): skyfri ${loaded_added} µs, nginx ${loaded_nginx} µs"
    echo "- skyfri errors under load: ${ERRS[skyfri_http]}: **$err_ok**"
    [ "$tp_ok" = PASS ] && [ "$lat_ok" = PASS ] && [ "$err_ok" = PASS ] || VERDICT=1
  else
    echo "- budget not checked: skyfri -> upstream did not run (see the skyfri log above)"
    VERDICT=1
  fi
}
report >"$WORK/report.md"   # not in a pipeline: VERDICT must survive
echo
cat "$WORK/report.md"
mkdir -p bench/out
cp "$WORK/report.md" bench/out/latest.md
echo
echo "bench: wrote bench/out/latest.md"
if [ "$STRICT" = 1 ] && [ "$VERDICT" != 0 ]; then exit 1; fi
if [ "$SKY_UP_OK" = 0 ] || [ "$SKY_PY_OK" = 0 ]; then exit 1; fi
exit 0
