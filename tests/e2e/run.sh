#!/usr/bin/env bash
# Runs the browser end-to-end test of the web UI.
#   tests/e2e/run.sh                 # spawns target/debug/optiroute (build it first: cargo build -p optiroute)
#   OPTIROUTE_BIN=path tests/e2e/run.sh
#   OPTIROUTE_URL=http://127.0.0.1:8000 tests/e2e/run.sh   # against a running gateway
# Installs Debian's chromium (apt) and playwright-core (npm, pinned in package-lock.json) when missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  echo "installing chromium (apt)..." >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y --no-install-recommends chromium \
    || { $sudo_cmd apt-get update && $sudo_cmd apt-get install -y --no-install-recommends chromium; }
fi

if [ ! -d "$here/node_modules/playwright-core" ]; then
  (cd "$here" && npm ci --no-audit --no-fund)
fi

cd "$repo"
exec node "$here/ui.test.mjs"
