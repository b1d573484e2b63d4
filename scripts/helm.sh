#!/usr/bin/env bash
# Gets the chart's tests and CI a helm binary without downloading a release tarball: helm is built
# from helm.sh/helm/v3 (pinned in test/helm/go.mod) through the Go module proxy, once per machine,
# into ~/.cache/ddnn-fog/helm-<version>/ and rebuilt only when test/helm/go.mod or go.sum changes.
# Prints the path of the helm binary on its last line.
#
# Environment: DDNN_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/ddnn-fog), GOPROXY as set.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/go-cache.sh
source scripts/go-cache.sh
module=test/helm

version=$(awk '$1 == "helm.sh/helm/v3" { print $2; exit }' "$module/go.mod")
[ -n "$version" ] || { echo "helm: no helm.sh/helm/v3 version in $module/go.mod" >&2; exit 1; }
cache=${DDNN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ddnn-fog}
dest="$cache/helm-$version"
stamp=$(cat "$module/go.mod" "$module/go.sum" | sha256sum | cut -c1-16)

if [ "$(cat "$dest/.stamp" 2>/dev/null)" = "$stamp" ] && [ -x "$dest/helm" ]; then
  echo "helm: cached helm $version in $dest" >&2
  echo "$dest/helm"
  exit 0
fi

# The go directive of the module is the oldest Go that builds this helm release.
need=$(awk '$1 == "go" { print $2; exit }' "$module/go.mod")
need_minor=$(echo "$need" | sed -E 's/^1\.([0-9]+).*/\1/')
require_go helm "$need_minor" "helm $version"

# The variables helm's own Makefile sets: the version `helm version` prints, and the Kubernetes
# version that `helm template` and `helm lint` assume (from the k8s.io/client-go it is built with;
# without it they would assume v1.20 and lint would miss APIs that later releases removed).
client_go=$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$module/go.mod")
k8s_minor=$(echo "$client_go" | sed -E 's/^v0\.([0-9]+)\..*/\1/')
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$k8s_minor"
done

go_build_cached helm "$module" "$dest" "$stamp" "$ldflags" helm.sh/helm/v3/cmd/helm
echo "$dest/helm"
