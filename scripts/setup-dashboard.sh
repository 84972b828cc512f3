#!/usr/bin/env bash
# Idempotent set-up for the dashboard's browser tests (tests/test_dashboard_browser.py): Debian's headless
# Chromium, which Playwright (pip, pinned in pyproject's test extras, installed with the project) drives through
# executable_path. Playwright's own browser download cannot work here and is never run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[setup-dashboard] $*" >&2; }

if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi
