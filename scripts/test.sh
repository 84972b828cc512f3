#!/usr/bin/env bash
# The whole test suite, after the same set-up as the demo. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pytest -q "$@"
