#!/usr/bin/env bash
# Builds the project's container images on this machine with podman, where no image registry can
# be reached (elsewhere, `docker buildx build` of the Dockerfile is enough: docs/image.md):
#
#   ddnn-fog:<package.json version>  the top-level Dockerfile, on a local stand-in of its base
#                                    image (scripts/image/base.sh: debootstrap + pinned Node)
#   eclipse-mosquitto:2              a stand-in of the operator's default broker image, from
#                                    Debian's mosquitto package (scripts/image/mosquitto.Dockerfile)
#   pause:3.10                       a Pod sandbox image for a local containerd (pause.c)
#
#   bash scripts/image/build.sh [app] [broker] [pause]     (default: all three)
#
# npm inside the build reaches the registry with this machine's npm configuration (user and
# global npmrc) and CA bundle, passed as build secrets: they never enter a layer. Safe to run
# again: base images are kept while their recipe is unchanged and podman's layer cache makes an
# unchanged rebuild take seconds. Prints one line per image: name, size, build seconds.
#
# Environment: PODMAN (podman command, default "podman"; e.g. "podman --root DIR" for a separate
# store), PODMAN_RUNTIME (default runc: crun fails without CAP_SYS_RESOURCE), TAG (the app
# image's name, default ddnn-fog:<version>), DDNN_IMAGE_CACHE (default ~/.cache/ddnn-fog/image).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

targets=("$@")
((${#targets[@]})) || targets=(app broker pause)
for t in "${targets[@]}"; do
  case $t in app | broker | pause) ;; *)
    echo "build.sh: unknown target \"$t\" (app, broker, pause)" >&2
    exit 2
    ;;
  esac
done

read -ra podman <<<"${PODMAN:-podman}"
command -v "${podman[0]}" >/dev/null || {
  echo "build.sh: ${podman[0]} is missing (Debian packages podman, runc, debootstrap)" >&2
  exit 1
}
export PODMAN="${podman[*]}"
cache=${DDNN_IMAGE_CACHE:-$HOME/.cache/ddnn-fog/image}
export DDNN_IMAGE_CACHE=$cache
mkdir -p "$cache"
# One build at a time per cache: two would debootstrap into, and tag, the same names.
exec 9>"$cache/.build.lock"
flock 9

# runc, and explicit limits: podman's defaults ask for more than this sandbox may set.
run_opts=(--runtime "${PODMAN_RUNTIME:-runc}" --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
build_opts=("${run_opts[@]}" --pull=never --network host)

version=$(node -p 'require("./package.json").version')
tag=${TAG:-ddnn-fog:$version}
# The base the Dockerfile names (ARG NODE_IMAGE=node:<major>-bookworm-slim).
node_image=$(sed -n 's/^ARG NODE_IMAGE=//p' Dockerfile | head -1)
node_major=$(sed -n 's/^node:\([0-9]*\)-bookworm-slim$/\1/p' <<<"$node_image")
if [ -z "$node_major" ]; then
  echo "build.sh: the Dockerfile's base \"$node_image\" is not node:<major>-bookworm-slim" >&2
  exit 1
fi
case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  armv7l) arch=arm ;;
  *) arch=$(uname -m) ;;
esac

log() { echo "build.sh: $*" >&2; }
built() { # IMAGE SECONDS
  local bytes
  bytes=$("${podman[@]}" image inspect --format '{{.Size}}' "$1")
  printf '%-28s %6s MB  %4d s\n' "$1" "$(((bytes + 500000) / 1000000))" "$2"
}
quiet_build() { # LOG ARGS...: podman build, its output shown only on failure
  local out=$1
  shift
  if ! nice -n 10 "${podman[@]}" build "${build_opts[@]}" "$@" >"$out" 2>&1; then
    grep -v 'CNI config' "$out" | tail -40 >&2
    log "podman build failed; full output in $out"
    exit 1
  fi
}

# The machine's npm configuration and CA bundle, as secrets, for those that exist. `npm config`
# runs outside the project so that the project's .npmrc does not count.
secrets=()
npm_file() { (cd / && npm config get "$1" 2>/dev/null) || true; }
userconfig=$(npm_file userconfig)
globalconfig=$(npm_file globalconfig)
[ -f "$userconfig" ] && secrets+=(--secret "id=npmrc,src=$userconfig")
[ -f "$globalconfig" ] && secrets+=(--secret "id=npmrc-global,src=$globalconfig")
ca=${NODE_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$ca" ] && secrets+=(--secret "id=ca,src=$ca")

logs="$cache/logs"
mkdir -p "$logs"
for t in "${targets[@]}"; do
  start=$SECONDS
  case $t in
    app)
      bash "$here/base.sh" "$node_major" >/dev/null
      log "podman build $tag (log: $logs/app.log)"
      revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
      created=$(git log -1 --format=%cI 2>/dev/null || echo unknown)
      # The labels also as --label: buildah 1.28 reuses a cached LABEL step whose build
      # arguments changed, which would keep the previous revision's labels.
      quiet_build "$logs/app.log" "${secrets[@]}" \
        --build-arg "TARGETOS=linux" --build-arg "TARGETARCH=$arch" \
        --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "CREATED=$created" \
        --label "org.opencontainers.image.version=$version" \
        --label "org.opencontainers.image.revision=$revision" \
        --label "org.opencontainers.image.created=$created" \
        -t "$tag" -f Dockerfile .
      built "$tag" $((SECONDS - start))
      ;;
    broker)
      bash "$here/base.sh" "$node_major" >/dev/null
      log "podman build eclipse-mosquitto:2 (log: $logs/broker.log)"
      quiet_build "$logs/broker.log" -t eclipse-mosquitto:2 -f "$here/mosquitto.Dockerfile" "$here"
      built eclipse-mosquitto:2 $((SECONDS - start))
      ;;
    pause)
      ctx=$(mktemp -d "$cache/.pause.XXXXXX")
      gcc -std=c99 -D_POSIX_C_SOURCE=200809L -Os -static -s -Wall -Wextra -Werror \
        -o "$ctx/pause" "$here/pause.c"
      recipe=$(sha256sum "$ctx/pause" | cut -c1-16)
      if [ "$("${podman[@]}" image inspect --format '{{index .Config.Labels "io.ddnn-fog.pause"}}' pause:3.10 2>/dev/null)" != "$recipe" ]; then
        tar --numeric-owner --owner=0 --group=0 -C "$ctx" -cf "$ctx/pause.tar" pause
        "${podman[@]}" import --change 'ENTRYPOINT ["/pause"]' --change "LABEL io.ddnn-fog.pause=$recipe" \
          --message "scripts/image/pause.c" "$ctx/pause.tar" pause:3.10 >/dev/null 2>&1
      fi
      rm -rf "$ctx"
      built pause:3.10 $((SECONDS - start))
      ;;
  esac
done
