#!/bin/sh
# docker/base.sh [TAG]: a stand-in for python:3.11-slim made from Debian's own packages, for
# machines that reach no container registry (CI here). Debian bookworm (minbase) with python3.11
# and a virtualenv at /opt/python first on PATH, so that `python` and `pip` in the Dockerfile
# behave as in the official image (root's, writable only by root). Run as root, with podman and
# mmdebstrap. Skipped when the image already exists (`podman rmi TAG` to remake it).
set -eu
TAG="${1:-localhost/chatbot-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
if podman image exists "$TAG"; then
    echo "base.sh: $TAG exists"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# This machine's own extra CA certificates (a TLS-inspecting egress proxy, say), so that pip
# inside the build reaches PyPI as it does on the host. None: nothing is added.
mkdir "$work/ca"
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$work/ca/"
fi
mmdebstrap --variant=minbase --mode=root \
    --include=python3.11,python3.11-venv,ca-certificates \
    --customize-hook="cp $work/ca/. \"\$1/usr/local/share/ca-certificates/\" -R" \
    --customize-hook='chroot "$1" update-ca-certificates' \
    --customize-hook='chroot "$1" python3.11 -m venv /opt/python' \
    --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" > "$1/etc/pip.conf"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$work/base.tar" \
    "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY bookworm-security main"
podman import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$work/base.tar" "$TAG"
