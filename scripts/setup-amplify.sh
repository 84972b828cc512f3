#!/usr/bin/env bash
# Amplify's set-up, idempotent, as root: libmagic and ffmpeg on the host (the node's own content detection),
# and the one local image the default workflow's jobs run in, bacalhau/amplify:latest, built with no registry:
#   1. bacalhau/amplify-base:<hash of the package list>: `debootstrap --variant=minbase` of Debian with
#      python3, Pillow, python3-magic and ffmpeg, then `docker import` (the slow part, minutes; done once);
#   2. bacalhau/amplify:latest: the base plus docker/amplify/*.py, labelled with the hash of those scripts.
# Each step is skipped when the Docker engine already holds the image with the same content hash. --force rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[setup-amplify] $*" >&2; }

SUITE=${AMPLIFY_SUITE:-bookworm}
MIRROR=${AMPLIFY_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-pil,python3-magic,ffmpeg,ca-certificates
BASE=bacalhau/amplify-base
IMAGE=bacalhau/amplify:latest
force=${1:-}

missing=()
dpkg -s libmagic1 >/dev/null 2>&1 || missing+=(libmagic1)
command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

base_hash=$(echo "$SUITE $PACKAGES" | sha256sum | cut -c1-16)
if [ "$force" = --force ] || ! docker image inspect "$BASE:$base_hash" >/dev/null 2>&1; then
  log "building $BASE:$base_hash (debootstrap $SUITE: $PACKAGES)"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >/dev/null
  # what a job image does not need: apt's lists and caches, docs, man pages, locales
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/{doc,man,info,locale}/*
  mkdir -p "$root"/inputs "$root"/outputs
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
    --change 'CMD ["/bin/sh"]' - "$BASE:$base_hash" >/dev/null
  rm -rf "$root"
  trap - EXIT
fi

scripts_hash=$( (echo "$base_hash"; cat docker/amplify/Dockerfile docker/amplify/*.py) | sha256sum | cut -c1-16)
have=$(docker image inspect "$IMAGE" --format '{{index .Config.Labels "bacalhau.content"}}' 2>/dev/null || true)
if [ "$force" = --force ] || [ "$have" != "$scripts_hash" ]; then
  log "building $IMAGE ($scripts_hash)"
  DOCKER_BUILDKIT=0 docker build -q -f docker/amplify/Dockerfile --build-arg "BASE=$BASE:$base_hash" \
    --label "bacalhau.content=$scripts_hash" -t "$IMAGE" docker/amplify >/dev/null
fi
