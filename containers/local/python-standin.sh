#!/usr/bin/env bash
# Build a local stand-in for the Python base image the Dockerfiles name
# (python:3.11.7-slim-bookworm) when no image registry can be reached.
#
#   containers/local/python-standin.sh [TAG]     # default: python:3.11.7-slim-bookworm
#
# What it is: a Debian bookworm minbase root filesystem (debootstrap, from the Debian
# mirror apt uses here), the shared libraries CPython needs, and this machine's own
# CPython 3.11.7 (its standard library only, none of its site-packages) copied into
# /usr/local, with pip from CPython's own ensurepip. Same Debian release, same Python
# version and layout as the official slim image, so the production Dockerfiles build
# on it unchanged; only the base differs. See containers/README.md.
#
# This machine reaches package indexes through a TLS-inspecting proxy: the stand-in
# carries the machine's CA bundle under its own name (PIP_CERT / SSL_CERT_FILE point at
# it), so pip inside builds trusts it. Debian's ca-certificates package would overwrite a
# copy at the usual path. Idempotent: an existing TAG is kept.
set -euo pipefail

tag="${1:-python:3.11.7-slim-bookworm}"
want_version="${tag#python:}"; want_version="${want_version%%-*}"
work="${CAUCE_STANDIN_DIR:-/var/tmp/cauce-standin}"

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "stand-in: $tag exists"
  exit 0
fi
python_bin="${CAUCE_STANDIN_PYTHON:-python3}"
prefix="$("$python_bin" -c 'import sys; print(sys.base_prefix)')"
version="$("$python_bin" -c 'import platform; print(platform.python_version())')"
if [ "$version" != "$want_version" ]; then
  echo "stand-in: $tag needs CPython $want_version; this machine's $python_bin is $version" >&2
  exit 2
fi
for tool in debootstrap; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    else
      echo "stand-in: $tool is missing (apt-get install $tool)" >&2
      exit 3
    fi
  fi
done
mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)"
mirror="${mirror:-http://deb.debian.org/debian}"

rootfs="$work/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"
echo "stand-in: debootstrap bookworm from $mirror"
# The shared libraries python:3.11-slim carries for CPython's extension modules.
debootstrap --variant=minbase \
  --include=passwd,ca-certificates,netbase,tzdata,libssl3,libsqlite3-0,libffi8,libbz2-1.0,liblzma5,libreadline8,zlib1g,libuuid1,libgdbm6,libexpat1,libncursesw6 \
  bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

echo "stand-in: CPython $version from $prefix"
# What the official slim image removes too: test suites, bytecode, the static libpython.
tar -C "$prefix" -c --exclude='lib/python3.11/site-packages/*' --exclude='__pycache__' --exclude='*.pyc' \
  --exclude='test' --exclude='tests' --exclude='idle_test' --exclude='libpython*.a' \
  lib include bin/python3.11 | tar -C "$rootfs/usr/local" -x
ln -sf python3.11 "$rootfs/usr/local/bin/python3"
ln -sf python3 "$rootfs/usr/local/bin/python"
mkdir -p "$rootfs/usr/local/share/cauce-standin"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/usr/local/share/cauce-standin/ca.crt"
chroot "$rootfs" /sbin/ldconfig
chroot "$rootfs" /usr/local/bin/python3 -m ensurepip --default-pip >/dev/null
ln -sf pip3 "$rootfs/usr/local/bin/pip"
chroot "$rootfs" /usr/local/bin/python3 -c 'import ssl, sqlite3, ctypes, bz2, lzma, zlib, uuid, readline, pyexpat'
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb

ca=/usr/local/share/cauce-standin/ca.crt
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "ENV PYTHON_VERSION=$version" \
  --change "ENV PIP_CERT=$ca SSL_CERT_FILE=$ca REQUESTS_CA_BUNDLE=$ca" \
  --change 'CMD ["python3"]' \
  - "$tag" >/dev/null
rm -rf "$rootfs"
echo "stand-in: $tag ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%d MiB", $1/1048576}'))"
