#!/usr/bin/env bash
# Installs what the bench scripts need beyond scripts/setup.sh, when missing: nginx (the
# reference proxy of bench/run.sh) and wrk (the load generator), from Debian's packages.
# With --warm, also what bench/warm.sh compares skyfri with: Go (golang-go, for
# bench/watchdog/) and a venv at bench/.venv-warm with Flask and waitress from PyPI, at the
# versions of OpenFaaS's python3-http template. Idempotent; needs root or sudo for apt.
set -euo pipefail

WARM=0
for arg in "$@"; do
  case "$arg" in
    --warm) WARM=1 ;;
    *) echo "bench/setup: unknown argument $arg (known: --warm)" >&2; exit 2 ;;
  esac
done
# Flask and waitress of the reference stack (bench/warm.sh); change both here only.
FLASK_VERSION=3.1.3
WAITRESS_VERSION=3.0.2
VENV="$(cd "$(dirname "$0")" && pwd)/.venv-warm"

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ "$WARM" = 1 ]; then
  command -v go >/dev/null 2>&1 || [ -x /usr/lib/go/bin/go ] || need+=(golang-go)
  /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
fi

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

if [ "$WARM" = 1 ] && ! "$VENV/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(m.version('flask') != '$FLASK_VERSION' or m.version('waitress') != '$WAITRESS_VERSION')
" 2>/dev/null; then
  echo "bench/setup: Flask $FLASK_VERSION and waitress $WAITRESS_VERSION into $VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "flask==$FLASK_VERSION" "waitress==$WAITRESS_VERSION"
fi
