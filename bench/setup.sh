#!/usr/bin/env bash
# Installs what bench/run.sh needs beyond scripts/setup.sh: nginx (the reference proxy) and wrk
# (the load generator), from Debian's packages, when missing. Idempotent; needs root or sudo.
set -euo pipefail

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)

if [ ${#need[@]} -gt 0 ]; then
  echo "bench/setup: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  if ! $sudo apt-get install -y -qq "${need[@]}" >/dev/null; then
    # nginx-light is Debian-only; fall back to the plain package elsewhere (e.g. Ubuntu).
    need=("${need[@]/nginx-light/nginx}")
    $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
