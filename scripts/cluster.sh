#!/usr/bin/env bash
# A real Kubernetes cluster on this machine (docs/cluster.md): two nodes, each with its own
# containerd and kubelet, plus etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kube-proxy and CoreDNS, on bridges routed inside the machine (test/cluster/network.ts).
#
#   bash scripts/cluster.sh build              kube binaries (scripts/control-plane.sh --node), helm,
#                                              CoreDNS, crictl, and the images (scripts/image/build.sh)
#   bash scripts/cluster.sh up [--nodes 1|2] [--restart]
#                                              build, then start (or keep the running one); prints
#                                              the kubeconfig path last
#   bash scripts/cluster.sh status
#   bash scripts/cluster.sh down               stop everything, remove Pods, mounts, rules, routes, bridges
#   bash scripts/cluster.sh e2e [vitest args]  build, then the end-to-end tests (test/e2e)
#
# Needs root. Everything is cached: ~/.cache/ddnn-fog/{kube-*,coredns-*,crictl-*,image} for the
# builds, /var/lib/ddnn-fog-cluster/images for each node's image store (DDNN_CLUSTER_DIR moves it).
# Environment: DDNN_CACHE_DIR, DDNN_CLUSTER_DIR, DDNN_CLUSTER_IMAGES=keep (no image rebuild),
# DDNN_E2E_NODES (1 or 2, default 2), DDNN_KEEP_CLUSTER (e2e leaves its cluster running), GOPROXY.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/go-cache.sh
source scripts/go-cache.sh

# Pinned here and in test/cluster/cluster.ts (COREDNS_VERSION, CRICTL_VERSION).
coredns_version=v1.14.7
crictl_version=v1.34.0
cache=${DDNN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ddnn-fog}

# go_install_cached NAME PACKAGE VERSION: `go install PACKAGE@VERSION` into $cache/NAME-VERSION/.
go_install_cached() {
  local name=$1 package=$2 version=$3 dest tmp start
  dest="$cache/$name-$version"
  if [ -x "$dest/$name" ]; then
    echo "cluster: cached $name $version in $dest" >&2
    return 0
  fi
  require_go cluster 25 "$name $version"
  echo "cluster: building $name $version with $(go env GOVERSION) (once per machine)" >&2
  start=$(date +%s)
  mkdir -p "$cache"
  tmp=$(mktemp -d "$dest.build.XXXXXX")
  # shellcheck disable=SC2064 # the folder is fixed now
  trap "rm -rf '$tmp'" EXIT
  GOFLAGS='' CGO_ENABLED=0 GOBIN="$tmp" nice -n 10 go install -trimpath -ldflags "-s -w" "$package@$version" >&2
  rm -rf "$dest"
  mv "$tmp" "$dest"
  trap - EXIT
  echo "cluster: built $name in $(($(date +%s) - start))s on $(nproc) cores -> $dest" >&2
}

build() {
  bash scripts/control-plane.sh --node >/dev/null
  bash scripts/helm.sh >/dev/null
  go_install_cached coredns github.com/coredns/coredns "$coredns_version"
  go_install_cached crictl sigs.k8s.io/cri-tools/cmd/crictl "$crictl_version"
  # DDNN_CLUSTER_IMAGES=keep: use the images podman already has (a working tree that does not
  # build right now, or a faster loop while changing only the tests).
  if [ "${DDNN_CLUSTER_IMAGES:-build}" = keep ] &&
    podman image exists "localhost/ddnn-fog:$(node -p 'require("./package.json").version')" 2>/dev/null; then
    echo "cluster: DDNN_CLUSTER_IMAGES=keep: using podman's images as they are" >&2
  else
    bash scripts/image/build.sh >&2
  fi
}

cli() {
  ORT_DISABLE_TELEMETRY=1 exec npx --no-install vite-node test/cluster/cli.ts "$@"
}

# One cluster per machine: up, down and a whole e2e run hold this lock (another waits for it).
lock_cluster() {
  local dir=${DDNN_CLUSTER_DIR:-/var/lib/ddnn-fog-cluster}
  mkdir -p "$dir"
  exec 8>"$dir/.lock"
  if ! flock -n 8; then
    echo "cluster: waiting for another up, down or e2e run on this machine ($dir/.lock)" >&2
    flock 8
  fi
}

[ "$(id -u)" -eq 0 ] || { echo "cluster: needs root (bridges, iptables, containerd, kubelet)" >&2; exit 1; }
command=${1:-}
case $command in
  build) build ;;
  up) build && lock_cluster && cli "$@" ;;
  down) lock_cluster && cli "$@" ;;
  status) cli "$@" ;;
  e2e)
    shift
    build
    lock_cluster
    ORT_DISABLE_TELEMETRY=1 exec npx --no-install vitest run --config test/e2e/vitest.config.ts "$@"
    ;;
  *)
    echo "usage: bash scripts/cluster.sh build | up [--nodes 1|2] [--restart] | status | down | e2e" >&2
    exit 2
    ;;
esac
