#!/usr/bin/env bash
# Builds, on a machine that reaches no image registry, local stand-ins of the public base images
# the project's Dockerfiles start from, under their public names:
#
#   debian:bookworm-slim      Debian bookworm from `debootstrap --variant=minbase`, trimmed like
#                             the official slim image (no apt lists, docs, man pages or locales)
#   node:<major>-bookworm-slim  that plus the Node binary of scripts/node-runtime.sh (pinned by
#                             sha256 there) as /usr/local/bin/node, and npm (pinned here) as the
#                             official image lays it out
#
#   bash scripts/image/base.sh [22|24]        (default 22)
#
# Slow parts are cached under ~/.cache/ddnn-fog/image: the trimmed root filesystem (one
# debootstrap per machine, about a minute) and the npm tarball. Every image carries the label
# io.ddnn-fog.base.recipe, a hash of this recipe; an image whose label matches is kept, so a
# second run does nothing. Needs root (or sudo) for debootstrap, and podman.
#
# Environment: DEBIAN_MIRROR (debootstrap's mirror; its default otherwise), PODMAN (the podman
# command, default podman), PODMAN_RUNTIME (default runc), DDNN_IMAGE_CACHE (the cache folder).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

major=${1:-22}
# Exact versions: the Node binaries pinned by sha256 in scripts/node-runtime.sh.
case $major in
  22) node_version=22.23.3 ;;
  24) node_version=24.21.0 ;;
  *)
    echo "base.sh: Node major \"$major\" has no pinned version (22 or 24)" >&2
    exit 2
    ;;
esac
# npm as the image ships it, checked against this sha256 of the registry's tarball.
npm_version=10.9.9
npm_sha256=c80bd097147cce32e31010b791bab8c71a26a5e10668210ec9d2e7f4c7cea2a1
suite=bookworm

read -ra podman <<<"${PODMAN:-podman}"
cache=${DDNN_IMAGE_CACHE:-$HOME/.cache/ddnn-fog/image}
arch=$(dpkg --print-architecture)
debian_image="debian:$suite-slim"
node_image="node:$major-$suite-slim"
# The recipes: this script; for the Node image also its Dockerfile and versions. A change rebuilds.
recipe=$(sha256sum <"$here/base.sh" | cut -c1-16)
node_recipe=$(cat "$here/base.sh" "$here/node-base.Dockerfile" - <<<"$node_version $npm_version" | sha256sum | cut -c1-16)
label=io.ddnn-fog.base.recipe

log() { echo "base.sh: $*" >&2; }
has_recipe() { # IMAGE RECIPE: the image exists and was built from this recipe
  [ "$("${podman[@]}" image inspect --format "{{index .Config.Labels \"$label\"}}" "$1" 2>/dev/null)" = "$2" ]
}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

mkdir -p "$cache"
work=$(mktemp -d "$cache/.work.XXXXXX")
trap 'as_root rm -rf "$work"' EXIT

# 1. The Debian root filesystem, trimmed, as a tarball (kept: debootstrap is the slow part).
# Bump the tail when the trimming below changes: the tarball is cached under this name.
rootfs_tar="$cache/$suite-minbase-$arch-1.tar"
if [ ! -s "$rootfs_tar" ]; then
  command -v debootstrap >/dev/null || {
    log "debootstrap is missing (Debian package debootstrap)"
    exit 1
  }
  log "debootstrap --variant=minbase $suite (about a minute)"
  as_root debootstrap --variant=minbase --arch="$arch" "$suite" "$work/rootfs" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    exit 1
  }
  r="$work/rootfs"
  # What the official slim image leaves out, and keeps out of later apt installs.
  as_root sh -c "
    rm -rf '$r'/var/cache/apt/archives/*.deb '$r'/var/cache/apt/*.bin '$r'/var/lib/apt/lists/* \
      '$r'/usr/share/doc/* '$r'/usr/share/man/* '$r'/usr/share/info/* '$r'/usr/share/locale/* \
      '$r'/var/log/*.log '$r'/var/log/apt/* '$r'/var/cache/debconf/*-old '$r'/etc/hostname
    mkdir -p '$r'/etc/dpkg/dpkg.cfg.d
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
      > '$r'/etc/dpkg/dpkg.cfg.d/docker-slim
    printf '%s\n' 'APT::Install-Recommends \"false\";' > '$r'/etc/apt/apt.conf.d/docker-no-recommends
    : > '$r'/etc/resolv.conf
  "
  as_root tar --numeric-owner --xattrs -C "$r" -cf "$work/rootfs.tar" .
  as_root chown "$(id -u):$(id -g)" "$work/rootfs.tar"
  mv "$work/rootfs.tar" "$rootfs_tar"
fi

# 2. debian:bookworm-slim from it.
if ! has_recipe "$debian_image" "$recipe"; then
  log "podman import $debian_image"
  "${podman[@]}" import --change 'CMD ["bash"]' --change "LABEL $label=$recipe" \
    --message "debootstrap --variant=minbase $suite, trimmed (scripts/image/base.sh)" \
    "$rootfs_tar" "$debian_image" >/dev/null 2>"$work/import.log" || {
    cat "$work/import.log" >&2
    exit 1
  }
fi

# 3. node:<major>-bookworm-slim: the Debian image plus Node and npm.
if ! has_recipe "$node_image" "$node_recipe"; then
  log "podman build $node_image (Node $node_version, npm $npm_version)"
  ctx="$work/node-context"
  mkdir -p "$ctx/npm"
  cp "$(bash "$root/scripts/node-runtime.sh" "$node_version")" "$ctx/node"
  chmod 755 "$ctx/node"
  npm_tgz="$cache/npm-$npm_version.tgz"
  if [ "$(sha256sum "$npm_tgz" 2>/dev/null | cut -d' ' -f1)" != "$npm_sha256" ]; then
    (cd "$work" && npm pack --silent "npm@$npm_version" >/dev/null)
    if [ "$(sha256sum "$work/npm-$npm_version.tgz" | cut -d' ' -f1)" != "$npm_sha256" ]; then
      log "npm@$npm_version from the registry does not have the pinned sha256 $npm_sha256"
      exit 1
    fi
    mv "$work/npm-$npm_version.tgz" "$npm_tgz"
  fi
  tar -xzf "$npm_tgz" -C "$ctx/npm" --strip-components=1 --no-same-owner
  "${podman[@]}" build --runtime "${PODMAN_RUNTIME:-runc}" --pull=never --network host \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --build-arg "BASE=$debian_image" --label "$label=$node_recipe" \
    -f "$here/node-base.Dockerfile" -t "$node_image" "$ctx" >"$work/build.log" 2>&1 || {
    tail -30 "$work/build.log" >&2
    exit 1
  }
fi
echo "$node_image"
