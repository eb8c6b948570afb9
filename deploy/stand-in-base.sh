#!/usr/bin/env bash
# A stand-in for the Dockerfile's base (python:3.11-slim-trixie), for machines that cannot reach
# Docker Hub but can reach a Debian mirror: a minimal Debian bookworm root filesystem with Debian's
# Python 3.11 (the lock's Python), imported as a local image. Needs root, debootstrap and Docker.
#
#   sudo deploy/stand-in-base.sh [TAG]        # TAG defaults to local/python:3.11-bookworm
#   sudo EXTRA_CA_CERTS=/usr/local/share/ca-certificates deploy/stand-in-base.sh   # behind a TLS proxy
#   docker build --build-arg BASE=local/python:3.11-bookworm -t datamoat-serve .
#
# It is bookworm, not trixie, and Debian's python3 rather than python.org's build under
# /usr/local: close enough to build and run the image, not the same bytes.
set -euo pipefail

tag="${1:-local/python:3.11-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT

debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
# ca-certificates: pip in the builder fetches wheels over HTTPS, as in the official image.
chroot "$rootfs" apt-get install -y --no-install-recommends python3 python3-venv ca-certificates
# Behind a TLS-intercepting proxy, pip must trust the proxy's CA: EXTRA_CA_CERTS names a folder of
# .crt files (such as the host's /usr/local/share/ca-certificates) added to the base's store.
# They end up in the runtime image too: a stand-in for a local test, not an image to ship.
if [[ -n "${EXTRA_CA_CERTS:-}" ]]; then
    cp "$EXTRA_CA_CERTS"/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates
fi
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/*
# The official image's interpreter is /usr/local/bin/python; the Dockerfile calls `python`.
ln -s /usr/bin/python3 "$rootfs/usr/local/bin/python"

# docker import records no environment: set what the official image sets.
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$tag"
docker image ls "$tag"
