#!/usr/bin/env bash
# Builds the local test image bacalhau/busybox:latest with `docker import` of a rootfs made from Debian's
# busybox-static (no registry needed). Idempotent: skips the build when the image exists, unless --force.
set -euo pipefail
IMAGE=bacalhau/busybox:latest
BUSYBOX=${BUSYBOX:-/bin/busybox}

if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  exit 0
fi
[ -x "$BUSYBOX" ] || { echo "build-images: $BUSYBOX not found (apt-get install busybox-static)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,tmp,outputs,inputs,etc,proc,sys,dev}
chmod 1777 "$root/tmp"
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
tar -C "$root" -c . | docker import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
echo "build-images: built $IMAGE" >&2
