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
# what a job never uses, taken out of the root: apt's lists and caches, docs, man pages, locales, and the GPU
# drivers ffmpeg's libraries would only dlopen (mesa's dri and the LLVM and z3 under it: 160 of 628 MB)
TRIM="var/lib/apt/lists/* var/cache/apt/* usr/share/doc/* usr/share/man/* usr/share/info/* usr/share/locale/*
usr/lib/x86_64-linux-gnu/dri usr/lib/x86_64-linux-gnu/libLLVM-*.so* usr/lib/x86_64-linux-gnu/libz3.so*"
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

base_hash=$(echo "$SUITE $PACKAGES $TRIM" | sha256sum | cut -c1-16)
if [ "$force" = --force ] || ! docker image inspect "$BASE:$base_hash" >/dev/null 2>&1; then
  log "building $BASE:$base_hash (debootstrap $SUITE: $PACKAGES)"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >/dev/null
  for pattern in $TRIM; do rm -rf "$root"/$pattern; done
  mkdir -p "$root"/inputs "$root"/outputs
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
    --change 'CMD ["/bin/sh"]' - "$BASE:$base_hash" >/dev/null
  rm -rf "$root"
  trap - EXIT
  # an older base (another package list) is no longer built on: its tag goes, and its layers with the last
  # image made from it
  docker images --format '{{.Repository}}:{{.Tag}}' "$BASE" | grep -v ":$base_hash\$" | xargs -r docker rmi >/dev/null 2>&1 || true
fi

scripts_hash=$( (echo "$base_hash"; cat docker/amplify/Dockerfile docker/amplify/*.py) | sha256sum | cut -c1-16)
have=$(docker image inspect "$IMAGE" --format '{{index .Config.Labels "bacalhau.content"}}' 2>/dev/null || true)
if [ "$force" = --force ] || [ "$have" != "$scripts_hash" ]; then
  log "building $IMAGE ($scripts_hash)"
  old=$(docker image inspect "$IMAGE" --format '{{.Id}}' 2>/dev/null || true)
  # the legacy builder (no buildx here) warns of its deprecation on stderr: shown only when the build fails
  if ! built=$(DOCKER_BUILDKIT=0 docker build -q -f docker/amplify/Dockerfile --build-arg "BASE=$BASE:$base_hash" \
      --label "bacalhau.content=$scripts_hash" -t "$IMAGE" docker/amplify 2>&1 >/dev/null); then
    echo "$built" >&2
    exit 1
  fi
  # the image works before it is called built: its Python libraries load and ffmpeg encodes H.264 and AAC
  docker run --rm --network none "$IMAGE" sh -c 'python3 -c "import PIL.Image, magic" &&
    ffmpeg -v error -f lavfi -i testsrc=size=32x32:rate=5 -f lavfi -i sine=d=0.4 -t 0.4 -pix_fmt yuv420p \
      -c:v libx264 -c:a aac -f mp4 /tmp/check.mp4 && ffprobe -v error /tmp/check.mp4' \
    || { log "$IMAGE does not work: see above"; docker rmi "$IMAGE" >/dev/null; exit 1; }
  # the image it replaces, unless a container still uses it
  [ -z "$old" ] || [ "$old" = "$(docker image inspect "$IMAGE" --format '{{.Id}}')" ] || docker rmi "$old" >/dev/null 2>&1 || true
fi
