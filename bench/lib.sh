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


# start_nginx UP_PORT: nginx (2 workers) as a keep-alive reverse proxy to 127.0.0.1:UP_PORT,
# under $WORK/nginx; sets NGX_PORT and NGX_PID (also added to PIDS).
start_nginx() {
  local up_port="$1" nginx
  nginx="$(command -v nginx || echo /usr/sbin/nginx)"
  NGX_PORT="$(free_port)"
  mkdir -p "$WORK/nginx/tmp"
  chmod -R 755 "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
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
  "$nginx" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx/stdout.log" 2>&1 &
  NGX_PID=$!
  PIDS+=("$NGX_PID")
}
