# Sourced by scripts/control-plane.sh and scripts/helm.sh: build Go programs from a small wrapper
# module through the Go module proxy, once per machine, into a cache folder stamped with the
# module's go.mod/go.sum hash (a crashed build leaves only a temporary folder behind).

# require_go TAG MINOR WHAT: stops unless Go >= 1.MINOR is on PATH.
require_go() {
  local tag=$1 minor=$2 what=$3 have
  command -v go >/dev/null 2>&1 || { echo "$tag: needs Go >= 1.$minor on PATH to build $what" >&2; exit 1; }
  have=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
  if [ "${have:-0}" -lt "$minor" ]; then
    echo "$tag: $(go env GOVERSION) is too old to build $what (needs Go >= 1.$minor)" >&2
    exit 1
  fi
}

# go_build_cached TAG MODULE DEST STAMP LDFLAGS PACKAGE...: builds the packages of MODULE (static,
# -trimpath, at low priority) into DEST, replacing what was there, and writes STAMP to DEST/.stamp.
go_build_cached() {
  local tag=$1 module=$2 dest=$3 stamp=$4 ldflags=$5 start tmp
  shift 5
  echo "$tag: building ${*##*/} with $(go env GOVERSION) (once per machine)" >&2
  start=$(date +%s)
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp -d "$dest.build.XXXXXX")
  # shellcheck disable=SC2064 # the folder is fixed now
  trap "rm -rf '$tmp'" EXIT
  (
    cd "$module"
    export GOFLAGS=-mod=mod CGO_ENABLED=0
    nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$tmp/" "$@"
  ) >&2
  echo "$stamp" >"$tmp/.stamp"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  trap - EXIT
  echo "$tag: built in $(($(date +%s) - start))s on $(nproc) cores -> $dest" >&2
}
