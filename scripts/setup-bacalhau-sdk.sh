#!/usr/bin/env bash
# The official Bacalhau Python clients, for tests/test_bacalhau_api.py and benchmarks/sdk_latency.py:
#   .tools/bacalhau-sdk/sdk        bacalhau-sdk 1.0.3 + its pinned bacalhau-apiclient 1.0.0
#   .tools/bacalhau-sdk/apiclient  bacalhau-apiclient 1.0.3 alone
# Pins: scripts/bacalhau-sdk/*.txt. The SDK needs Python < 3.12: the system python3 (3.11) makes both venvs.
# Idempotent: a stamp of the pins' hash.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[setup-bacalhau-sdk] $*" >&2; }

py=${BACALHAU_SDK_PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(not ((3, 8) <= sys.version_info[:2] < (3, 12)))'; then
  log "$py is $("$py" --version 2>&1): bacalhau-sdk 1.0.3 needs Python >= 3.8.1, < 3.12 (set BACALHAU_SDK_PYTHON)"
  exit 1
fi
pins=scripts/bacalhau-sdk
stamp=.tools/bacalhau-sdk/.installed-$(cat $pins/sdk.txt $pins/apiclient.txt $pins/runtime.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ]; then
  exit 0
fi
log "installing the Bacalhau Python clients into .tools/bacalhau-sdk"
rm -rf .tools/bacalhau-sdk
mkdir -p .tools/bacalhau-sdk
for name in sdk apiclient; do
  venv=.tools/bacalhau-sdk/$name
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$pins/$name.txt"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$pins/runtime.txt"
done
touch "$stamp"
