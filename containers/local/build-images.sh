#!/usr/bin/env bash
# Build every image family on this machine, exactly as the release build does
# (containers/build-image.sh: build, smoke check when run, non-root, size budget), with
# the production Dockerfiles; only build arguments differ, for what no registry here
# can serve:
#   * the Python base image: a local stand-in with the same tag (python-standin.sh);
#   * Beam's SDK image (the Dataflow worker boot program): BEAM_SDK_IMAGE names a
#     stand-in that holds no boot program, so the beam image runs pipeline steps but
#     cannot be a Dataflow worker;
#   * PyTorch's CPU index: TORCH_INDEX_URL points at a loopback index serving the same
#     CPU wheel, fetched by pip on this machine (from PyTorch's index, or from the
#     wheels pip is configured to find locally);
#   * --network host: the engine runs without a bridge network.
#
#   containers/local/build-images.sh [--push REPOSITORY OUT_DIR TAG] [FAMILY ...]
#
# Without --push the images are tagged with the names compiled specs use by default
# (cauce.images: ghcr.io/cauce-ml/cauce-FAMILY:VERSION), so `cauce run --runner docker`
# finds them without a registry. With --push they go to REPOSITORY (e.g. a local
# registry) and OUT_DIR/FAMILY.env records each pushed digest.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
push=0
if [ "${1:-}" = "--push" ]; then
  [ "$#" -ge 4 ] || { echo "usage: $0 [--push REPOSITORY OUT_DIR TAG] [FAMILY ...]" >&2; exit 2; }
  push=1 repository="$2" out_dir="$3" tag="$4"
  shift 4
else
  repository="${CAUCE_IMAGE_REGISTRY:-ghcr.io/cauce-ml}"
  out_dir="$root/build/images"
  tag="$("$python" -c 'import cauce; print(cauce.__version__)' 2>/dev/null || sed -n 's/^__version__ = "\(.*\)"/\1/p' "$root/src/cauce/__init__.py")"
fi
families=("$@")
[ "${#families[@]}" -gt 0 ] || families=(base beam tf torch serving)

"$here/standins.sh"
index="$root/build/local-index"
sdk_standin="$("$here/standins.sh" --beam-sdk-image)"
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$python" -m http.server --bind 127.0.0.1 --directory "$index" "$port" >/dev/null 2>&1 &
index_server=$!
trap 'kill "$index_server" 2>/dev/null || true' EXIT

export DOCKER_BUILDKIT=0  # the legacy builder: no buildx plugin here, and --network host works
export DOCKER_BUILD_ARGS="--network host --build-arg TORCH_INDEX_URL=http://127.0.0.1:$port/ --build-arg BEAM_SDK_IMAGE=$sdk_standin"
export CAUCE_PUSH="$push"
for family in "${families[@]}"; do
  "$root/containers/build-image.sh" "$family" "$repository" "$out_dir" "$tag"
done
# A rebuild leaves the previous build of each family untagged (several GB each time):
# remove those of ours, and only ours.
docker image prune --force --filter "label=org.opencontainers.image.source=https://github.com/cauce-ml/cauce" >/dev/null
