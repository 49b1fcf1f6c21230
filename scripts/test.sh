#!/usr/bin/env bash
# Runs every OptiRoute test on a fresh machine: installs what the tests need if it is missing
# (Debian packages, the openai Python package, playwright-core), then runs formatting, lints,
# the Rust unit and integration tests, and the end-to-end suites (official OpenAI SDK, headless
# Chromium, real Prometheus). Tests start their own servers on free loopback ports.
#
#   ./scripts/test.sh            everything
#   QUICK=1 ./scripts/test.sh    Rust tests only (no installs, no browser/Prometheus suites)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '\n==> %s\n' "$*"; }
need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }

if [ -z "${QUICK:-}" ]; then
  have redis-server || need_apt+=(redis-server)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
  have prometheus || need_apt+=(prometheus)
  have promtool || need_apt+=(prometheus)
  [ -x /usr/bin/chromium ] || need_apt+=(chromium)
  have node || need_apt+=(nodejs npm)
  have python3 || need_apt+=(python3 python3-pip)
  have openssl || need_apt+=(openssl)
  if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing Debian packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  fi
  if ! python3 -c 'import openai' 2>/dev/null; then
    log "installing the openai Python package"
    python3 -m pip install -q openai 2>&1 | grep -v 'WARNING: Running pip as' || true
  fi
  if ! python3 -c 'import yaml' 2>/dev/null; then
    python3 -m pip install -q pyyaml 2>&1 | grep -v 'WARNING: Running pip as' || true
  fi
  if [ ! -d tests/e2e/node_modules/playwright-core ]; then
    log "installing playwright-core (uses Debian's chromium; downloads no browser)"
    (cd tests/e2e && npm ci --silent --no-audit --no-fund)
  fi
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test (unit + integration)"
cargo test --workspace --locked

if [ -n "${QUICK:-}" ]; then
  exit 0
fi

log "building the gateway binary for the end-to-end suites"
cargo build --locked -p optiroute
BIN="$ROOT/target/debug/optiroute"

log "end-to-end: official openai Python SDK against the gateway"
OPTIROUTE_BIN="$BIN" python3 tests/e2e/openai_sdk_test.py

log "end-to-end: an upstream over HTTPS (certificate checked)"
OPTIROUTE_BIN="$BIN" python3 tests/e2e/tls_upstream_test.py

log "end-to-end: web UI in headless Chromium"
OPTIROUTE_BIN="$BIN" node --test tests/e2e/ui.test.mjs

log "end-to-end: Prometheus scrapes the gateway; every dashboard query returns data"
OPTIROUTE_BIN="$BIN" python3 tests/e2e/observability_test.py

log "fuzz smoke"
# The fuzz build is kept outside the clone, so later runs on the same machine reuse it.
FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-${HOME:-/tmp}/.cache/optiroute-fuzz} scripts/fuzz.sh --smoke

log "all test suites passed"
