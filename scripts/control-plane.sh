#!/usr/bin/env bash
# Gets the operator tests a real Kubernetes control plane without Docker: etcd from Debian's
# etcd-server package, and kube-apiserver, kube-controller-manager and kubectl built from
# k8s.io/kubernetes (pinned in test/cluster/go.mod) through the Go module proxy. The binaries are
# cached under ~/.cache/ddnn-fog/kube-<version>/ and rebuilt only when test/cluster/go.sum changes.
# Prints the directory holding the binaries on its last line.
#
# Environment: DDNN_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/ddnn-fog), GOPROXY as set.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/go-cache.sh
source scripts/go-cache.sh
module=test/cluster

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
binaries=(kube-apiserver kube-controller-manager kubectl)

have_all() {
  [ "$(cat "$dest/.stamp" 2>/dev/null)" = "$stamp" ] || return 1
  for b in "${binaries[@]}"; do [ -x "$dest/$b" ] || return 1; done
}

if have_all; then
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

go_build_cached control-plane "$module" "$dest" "$stamp" "$ldflags" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl
echo "$dest"
