#!/usr/bin/env bash
# Prints the path of a Node.js binary of the exact version $1, installed once from the npm
# registry's `node` package into ~/.cache/ddnn-fog/node-<version> (the tests run on it too).
#
#   bash scripts/node-runtime.sh 22.23.3
set -euo pipefail
version=${1:?usage: node-runtime.sh VERSION}
dir="$HOME/.cache/ddnn-fog/node-$version"
bin="$dir/node_modules/node/bin/node"
if ! "$bin" --version >/dev/null 2>&1; then
  rm -rf "$dir"
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-save --no-audit --no-fund --loglevel=error \
    --cache "$HOME/.cache/npm" "node@$version" >&2
fi
[ "$("$bin" --version)" = "v$version" ] || {
  echo "node-runtime.sh: $bin is not Node $version" >&2
  exit 1
}
echo "$bin"
