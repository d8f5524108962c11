#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine: use the one that is running, or
# install Debian's docker.io and start its daemon in the background. Idempotent.
#
#   containers/local/engine.sh          # exit 0 when `docker info` answers
#
# Needs root (apt-get, dockerd) only when no engine answers yet. Without an engine and
# without a way to install one it says what is missing and exits 3; `cauce run`
# keeps working with its default subprocess runner.
set -euo pipefail

log_dir="${CAUCE_ENGINE_DIR:-/var/lib/cauce-engine}"

answers() { docker info >/dev/null 2>&1; }

if answers; then
  echo "engine: a Docker engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "engine: no Docker engine answers and none can be installed here" \
         "(needs root and apt-get for Debian's docker.io); install Docker and start it," \
         "or keep using the default subprocess runner" >&2
    exit 3
  fi
  echo "engine: installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

if [ "$(id -u)" != 0 ]; then
  echo "engine: dockerd is installed but not running, and starting it needs root" \
       "(sudo $0)" >&2
  exit 3
fi

mkdir -p "$log_dir"
# No iptables/bridge: containers use the host's network (builds and steps run with
# --network host). overlay2 keeps layers shared between the five image families.
echo "engine: starting dockerd (log: $log_dir/dockerd.log)"
nohup dockerd --iptables=false --ip6tables=false --bridge=none \
  --storage-driver=overlay2 >"$log_dir/dockerd.log" 2>&1 &
for _ in $(seq 1 60); do
  if answers; then
    echo "engine: started ($(docker version --format '{{.Server.Version}}'))"
    exit 0
  fi
  sleep 1
done
echo "engine: dockerd did not answer within 60 s; see $log_dir/dockerd.log" >&2
tail -n 20 "$log_dir/dockerd.log" >&2 || true
exit 1
