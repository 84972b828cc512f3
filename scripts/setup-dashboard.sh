#!/usr/bin/env bash
# Idempotent set-up for the dashboard's browser tests (tests/test_dashboard_browser.py): Debian's headless
# Chromium, which Playwright (pip, in the test extras) drives through executable_path. Playwright's own browser
# download cannot work here and is never run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[setup-dashboard] $*" >&2; }

if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi
if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import playwright' >/dev/null 2>&1; then
  log "installing playwright into .venv (pip; its browsers are not downloaded)"
  .venv/bin/pip install -q --disable-pip-version-check 'playwright==1.49.1'
fi
