#!/usr/bin/env bash
# The offline base image: Debian bookworm (the build host's release, so binaries built
# on the host run in it) made with debootstrap from Debian's own package mirror and
# loaded with `docker import`, for machines whose Docker engine cannot pull images.
# Idempotent: does nothing when the image exists.
set -euo pipefail
IMAGE=${1:-crossbatch-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: debootstrap is missing (apt-get install debootstrap, as root)" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
fi
root=$(mktemp -d /var/tmp/crossbatch-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "building $IMAGE with debootstrap (bookworm, minbase) from $MIRROR" >&2
debootstrap --variant=minbase --include=ca-certificates,curl bookworm "$root" "$MIRROR" >&2
# Keep the image small: no apt lists or caches.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/*
tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "$IMAGE ready" >&2
