#!/usr/bin/env bash
# Runs the benchmarks in bench/ one after another (no npm scripts needed) and prints a summary.
#
#   bash bench/run-all.sh [--no-build] [NAME ...]
#
# NAME: wire-bytes, offload-rtt, throughput, eval, offload-rtt:gateway, throughput:gateway, agent,
# steps (default: all eight, in that order; NAME:gateway runs the benchmark with --tier gateway;
# steps has no goal, it prints the per-step costs). Builds first
# with the project's TypeScript (tsconfig.build.json) unless --no-build. Each benchmark prints its
# table and one JSON line and exits non-zero when one of its goals is not met; this script exits 1
# when any did (2 when the build failed). Extra flags for one benchmark: run it alone, e.g.
#   node dist/bench/throughput.js --rounds 3
set -u
cd "$(dirname "$0")/.."

build=1
names=()
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    -h | --help)
      sed -n '2,12p' "$0"
      exit 0
      ;;
    *) names+=("$arg") ;;
  esac
done
if [ ${#names[@]} -eq 0 ]; then
  names=(wire-bytes offload-rtt throughput eval offload-rtt:gateway throughput:gateway agent steps)
fi

if [ "$build" = 1 ]; then
  node node_modules/typescript/bin/tsc -p tsconfig.build.json || exit 2
fi

status=0
summary=()
for name in "${names[@]}"; do
  flags=()
  case "$name" in
    *:*) flags=(--tier "${name#*:}") ;;
  esac
  script="dist/bench/${name%%:*}.js"
  if [ ! -f "$script" ]; then
    echo "no benchmark $name ($script is missing)" >&2
    summary+=("$name: missing")
    status=1
    continue
  fi
  echo "=== $name ($(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null))"
  # Every benchmark bounds its own loops; this is the backstop.
  timeout --kill-after=10 900 node "$script" "${flags[@]}"
  rc=$?
  case $rc in
    0) summary+=("$name: goals met") ;;
    124 | 137) summary+=("$name: timed out") ;;
    *) summary+=("$name: exit $rc (a goal not met, or an error: see its output)") ;;
  esac
  [ $rc = 0 ] || status=1
  echo
done
echo "=== summary"
printf '%s\n' "${summary[@]}"
exit $status
