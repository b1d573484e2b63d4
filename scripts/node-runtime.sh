#!/usr/bin/env bash
# Prints the path of a Node.js binary of the exact version $1, installed once from the npm
# registry's `node` package (a repackaging of the official builds) into
# ~/.cache/ddnn-fog/node-<version>; the tests run on it too.
#
#   bash scripts/node-runtime.sh 22.23.3
#
# The binaries of the versions the tests use are pinned by sha256 for linux x86_64 (the CI
# machines): a cached or downloaded binary that differs is refused.
set -euo pipefail
version=${1:?usage: node-runtime.sh VERSION}
if ! [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  echo "node-runtime.sh: \"$version\" is not an exact version like 22.23.3" >&2
  exit 2
fi
declare -A pinned=(
  [22.23.3 - x86_64]=fde6a4bf8d0562f7751d1a2d6cb9b417c4cfe107bbcb0aa3e9a24e125e348f48
  [24.21.0 - x86_64]=7fde7b8afa198da66257f42ee2001d874c7355631e6d1579a5fb5ef1f246df4c
)
want=${pinned["$version - $(uname -m)"]:-}
cache="$HOME/.cache/ddnn-fog"
dir="$cache/node-$version"
bin="$dir/node_modules/node/bin/node"

good() {
  [ "$("$1" --version 2>/dev/null)" = "v$version" ] || return 1
  [ -z "$want" ] || [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$want" ]
}

if ! good "$bin"; then
  # Install beside the cache entry, check, then move it into place: a failed or concurrent
  # install never leaves a directory that a later run would trust.
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.node-$version.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  npm install --prefix "$tmp" --no-save --no-audit --no-fund --loglevel=error --update-notifier=false \
    --cache "$HOME/.cache/npm" "node@$version" >&2
  if ! good "$tmp/node_modules/node/bin/node"; then
    echo "node-runtime.sh: the npm package node@$version did not give the expected Node v$version binary${want:+ (sha256 $want)}" >&2
    exit 1
  fi
  rm -rf "$dir"
  chmod 755 "$tmp"
  mv "$tmp" "$dir"
fi
echo "$bin"
