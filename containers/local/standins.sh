#!/usr/bin/env bash
# Prepare what local image builds use in place of what no registry here can serve
# (see build-images.sh): a running engine, the Python base image stand-in, the Beam SDK
# image stand-in, and torch's CPU wheel in build/local-index/ (a simple index layout).
# Idempotent.
#
#   containers/local/standins.sh                    # prepare everything
#   containers/local/standins.sh --beam-sdk-image   # print the Beam SDK stand-in's tag
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
beam_version="$(sed -n 's/^apache-beam==//p' "$root/requirements/lock.txt")"
sdk_standin="cauce-local/beam-sdk-absent:$beam_version"
if [ "${1:-}" = "--beam-sdk-image" ]; then
  echo "$sdk_standin"
  exit 0
fi

"$here/engine.sh"
"$here/python-standin.sh"

# Beam's SDK image cannot be pulled here: a stand-in holding an empty /opt/apache/beam.
if ! docker image inspect "$sdk_standin" >/dev/null 2>&1; then
  scratch="$(mktemp -d)"
  mkdir -p "$scratch/opt/apache/beam"
  echo "Beam's worker boot program is left out of locally built images (no registry to pull apache/beam_python3.11_sdk from)." \
    > "$scratch/opt/apache/beam/NOT-INCLUDED"
  tar -C "$scratch" -c . | docker import - "$sdk_standin" >/dev/null
  rm -rf "$scratch"
fi

# torch's CPU wheel on a loopback index (a directory listing is a valid simple index page).
torch_version="$(sed -n 's/^torch==//p' "$root/requirements/lock.txt")"
index="$root/build/local-index"
if ! ls "$index/torch/"torch-"$torch_version"*.whl >/dev/null 2>&1; then
  mkdir -p "$index/torch"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --retries 0 --timeout 15 \
    --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" \
    --platform manylinux_2_28_x86_64 --python-version 3.11 \
    "torch==$torch_version" --dest "$index/torch" 2>&1 | grep -v -e '^WARNING: Retrying' -e 'NameResolutionError' || true
  ls "$index/torch/"torch-"$torch_version"*.whl >/dev/null 2>&1 \
    || { echo "error: could not fetch torch $torch_version's CPU wheel for the local index" >&2; exit 1; }
fi
