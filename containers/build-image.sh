#!/usr/bin/env bash
# Build one cauce image, check it by running it, push it, and record the pushed digest
# for the compile step (cloudbuild-release.yaml runs this once per family; `make images`
# runs it for every family without pushing).
#
#   containers/build-image.sh FAMILY REPOSITORY OUT_DIR TAG [RELEASE_GIT_TAG]
#
# Builds containers/FAMILY.Dockerfile as REPOSITORY/cauce-FAMILY:TAG (and, for a release
# git tag vX.Y.Z, also :X.Y.Z, the name cauce.images gives that version), then runs the
# built image: its smoke import (`python -m cauce.families smoke FAMILY`) must pass, its
# user must not be root, and its size (the engine's figure) must be within its budget in
# containers/size-budgets.txt. Only then does it push every tag and write
# OUT_DIR/FAMILY.env holding
#   export CAUCE_IMAGE_<FAMILY>=REPOSITORY/cauce-FAMILY@sha256:<digest>
# which `cauce compile` / `cauce export` read to name the image by digest. A failed
# push leaves no .env file, so nothing can be compiled against an unpushed digest.
#
# Environment: DOCKER_BUILD_ARGS, extra `docker build` arguments (local builds pass
# their stand-ins here, see containers/local/build-images.sh); CAUCE_PUSH=0 builds and
# checks without pushing or recording a digest.
set -euo pipefail

if [ "$#" -lt 4 ] || [ "$#" -gt 5 ] || [ -z "$4" ]; then
  echo "usage: $0 FAMILY REPOSITORY OUT_DIR TAG [RELEASE_GIT_TAG]" >&2
  exit 2
fi
family="$1" repository="$2" out_dir="$3"
tags=("$4")
release="${5:-}"
if [ -n "$release" ]; then
  if [[ ! "$release" =~ ^v[0-9]+\.[0-9]+\.[0-9]+ ]]; then
    echo "error: release git tag '$release' is not vMAJOR.MINOR.PATCH" >&2
    exit 2
  fi
  tags+=("${release#v}")
fi
here="$(cd "$(dirname "$0")" && pwd)"
dockerfile="$here/$family.Dockerfile"
budget="$(awk -v family="$family" '!/^#/ && $1 == family { print $2 }' "$here/size-budgets.txt")"
if [ ! -f "$dockerfile" ]; then
  echo "error: no Dockerfile for image family '$family' ($dockerfile)" >&2
  exit 2
fi
if [ -z "$budget" ]; then
  echo "error: image family '$family' has no size budget in $here/size-budgets.txt" >&2
  exit 2
fi

image="$repository/cauce-$family"
tag_args=()
for tag in "${tags[@]}"; do tag_args+=(--tag "$image:$tag"); done
read -r -a extra_args <<< "${DOCKER_BUILD_ARGS:-}"
started=$SECONDS
docker build --file "$dockerfile" "${extra_args[@]}" "${tag_args[@]}" "$here/.."
built="$image:${tags[0]}"

# The image as it will run: the final stage's venv, as its own user.
if ! smoke="$(docker run --rm --network none --entrypoint python "$built" -m cauce.families smoke "$family" 2>&1)"; then
  echo "error: cauce-$family fails its smoke check when run:" >&2
  echo "$smoke" >&2
  exit 1
fi
uid="$(docker run --rm --network none --entrypoint id "$built" -u)"
if [ "$uid" = 0 ]; then
  echo "error: cauce-$family runs as root (uid 0); its Dockerfile must end with USER 10001" >&2
  exit 1
fi
size_bytes="$(docker image inspect --format '{{.Size}}' "$built")"
size_mib=$(( (size_bytes + 1048575) / 1048576 ))
if [ "$size_mib" -gt "$budget" ]; then
  echo "error: cauce-$family is $size_mib MiB, over its budget of $budget MiB (containers/size-budgets.txt);" \
       "find what grew with \`cauce images --sizes\` before raising the budget" >&2
  exit 1
fi
echo "cauce-$family: $size_mib MiB (budget $budget MiB), uid $uid, smoke check passed, built in $((SECONDS - started)) s"

if [ "${CAUCE_PUSH:-1}" = 0 ]; then
  exit 0
fi
for tag in "${tags[@]}"; do docker push "$image:$tag"; done
# The registry's digest of what was just pushed (RepoDigests is filled in by the push).
digest_ref="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$built" | grep -F -m1 "$image@sha256:")"
mkdir -p "$out_dir"
echo "export CAUCE_IMAGE_${family^^}=$digest_ref" > "$out_dir/$family.env"
echo "cauce-$family pushed: $digest_ref"
