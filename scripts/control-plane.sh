#!/usr/bin/env bash
# Gets the operator tests a real Kubernetes control plane without Docker: etcd from Debian's
# etcd-server package, and kube-apiserver, kube-controller-manager and kubectl built from
# k8s.io/kubernetes (pinned in test/cluster/go.mod) through the Go module proxy. The binaries are
# cached under ~/.cache/ddnn-fog/kube-<version>/ and rebuilt only when test/cluster/go.sum changes.
# With --node it also builds what a node runs, kubelet, kube-scheduler and kube-proxy (for the
# test cluster of scripts/cluster.sh), into the same folder from the same module.
# Prints the directory holding the binaries on its last line.
#
#   bash scripts/control-plane.sh [--node]
#
# Environment: DDNN_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/ddnn-fog), GOPROXY as set.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/go-cache.sh
source scripts/go-cache.sh
module=test/cluster
binaries=(kube-apiserver kube-controller-manager kubectl)
case ${1:-} in
  "") ;;
  --node) binaries+=(kubelet kube-scheduler kube-proxy) ;;
  *) echo "control-plane: unknown argument \"$1\" (--node builds the node binaries too)" >&2; exit 2 ;;
esac

# etcd: Debian's package (3.4) is enough for kube-apiserver's tests.
if ! command -v etcd >/dev/null 2>&1; then
  echo "control-plane: installing Debian package etcd-server" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends etcd-server >&2
fi

version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$module/go.mod")
[ -n "$version" ] || { echo "control-plane: no k8s.io/kubernetes version in $module/go.mod" >&2; exit 1; }
cache=${DDNN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ddnn-fog}
dest="$cache/kube-$version"
stamp=$(cat "$module/go.mod" "$module/go.sum" | sha256sum | cut -c1-16)

# The binaries still to build: all of them when the cache is from another go.mod/go.sum.
missing=()
if [ "$(cat "$dest/.stamp" 2>/dev/null)" = "$stamp" ]; then
  for b in "${binaries[@]}"; do [ -x "$dest/$b" ] || missing+=("$b"); done
else
  missing=("${binaries[@]}")
fi

if ((${#missing[@]} == 0)); then
  echo "control-plane: cached kube $version in $dest (etcd $(etcd --version | awk 'NR==1 { print $3 }'))" >&2
  echo "$dest"
  exit 0
fi

require_go control-plane 25 "kube $version"

minor=$(echo "$version" | sed -E 's/^v1\.([0-9]+)\..*/\1/')
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done

packages=("${missing[@]/#/k8s.io/kubernetes/cmd/}")
if ((${#missing[@]} == ${#binaries[@]})); then
  go_build_cached control-plane "$module" "$dest" "$stamp" "$ldflags" "${packages[@]}"
else
  # The cache is current and only some binaries are new (--node after a plain run): add them,
  # leaving the others in place for tests that may be running them.
  go_build_cached control-plane "$module" "$dest.add" "$stamp" "$ldflags" "${packages[@]}"
  for b in "${missing[@]}"; do mv -f "$dest.add/$b" "$dest/$b"; done
  rm -rf "$dest.add"
fi
echo "$dest"
