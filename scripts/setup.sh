#!/usr/bin/env bash
# Idempotent set-up of everything bacalhau-py needs on a Debian machine, as root:
# apt packages, a running Docker engine, the virtualenv with the project, the local test images.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[setup] $*" >&2; }

apt_missing=()
command -v dockerd >/dev/null 2>&1 || apt_missing+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || apt_missing+=(busybox-static)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_missing+=(python3-venv)
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3)
command -v npm >/dev/null 2>&1 || apt_missing+=(nodejs npm)
command -v ip >/dev/null 2>&1 || apt_missing+=(iproute2)      # network namespaces for the partition test
if [ ${#apt_missing[@]} -gt 0 ]; then
  log "installing ${apt_missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  nohup dockerd --bridge=none --iptables=false >/var/log/bacalhau-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start: see /var/log/bacalhau-dockerd.log"; exit 1; }
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "creating the virtualenv in .venv"
  python3 -m venv .venv
  # compat mode: a .pth path instead of an import hook, which costs every client command ~10 ms
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# trio-typing, which libp2p imports at run time, also installs stubs written for trio 0.22 (trio-stubs,
# outcome-stubs) that mypy would take over trio's and outcome's own types (no trio.TaskStatus, no
# abandon_on_cancel=): the type check (tests/test_lint.py) reads the packages' own
rm -rf .venv/lib/python3*/site-packages/trio-stubs .venv/lib/python3*/site-packages/outcome-stubs

# js-ipfs, which serves the Kubo RPC API for the --ipfs-connect tests (no Kubo binary can be had here)
js_stamp=.tools/js-ipfs/.installed-$(cat scripts/js-ipfs/package.json scripts/js-ipfs/polyfill.cjs | sha256sum | cut -c1-16)
if [ ! -f "$js_stamp" ]; then
  log "installing js-ipfs into .tools/js-ipfs (npm)"
  mkdir -p .tools/js-ipfs
  cp scripts/js-ipfs/package.json scripts/js-ipfs/polyfill.cjs .tools/js-ipfs/
  (cd .tools/js-ipfs && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  rm -f .tools/js-ipfs/.installed-*
  touch "$js_stamp"
fi

bash scripts/setup-bacalhau-sdk.sh   # the official Bacalhau Python clients (tests/test_bacalhau_api.py)
bash docker/build-images.sh
bash scripts/setup-amplify.sh       # libmagic, ffmpeg and the image of Amplify's default workflow
bash scripts/setup-dashboard.sh      # Debian's chromium for the dashboard's browser tests
log "ready: $(.venv/bin/bacalhau --version)"
