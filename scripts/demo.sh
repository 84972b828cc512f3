#!/usr/bin/env bash
# The main job: set up, start a local `bacalhau serve` (if none answers), run a Docker job and show its output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export BACALHAU_DIR="${BACALHAU_DIR:-$HOME/.bacalhau}"

if ! bacalhau version >/dev/null 2>&1 || ! bacalhau node list >/dev/null 2>&1; then
  echo "[demo] starting bacalhau serve (log: $BACALHAU_DIR/serve.log)" >&2
  mkdir -p "$BACALHAU_DIR"
  nohup bacalhau serve >"$BACALHAU_DIR/serve.log" 2>&1 &
  for _ in $(seq 1 60); do bacalhau node list >/dev/null 2>&1 && break; sleep 0.5; done
fi
bacalhau node list
echo "[demo] bacalhau docker run -f bacalhau/busybox -- sh -c 'for i in 1 2 3 4 5; do echo step \$i; sleep 1; done'  (logs stream live)" >&2
bacalhau docker run -f bacalhau/busybox -- sh -c 'for i in 1 2 3 4 5; do echo "step $i"; sleep 1; done'
echo "[demo] the node keeps running; stop it with: pkill -f 'bacalhau serve'" >&2
