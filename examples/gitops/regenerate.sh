#!/usr/bin/env bash
# Rewrites the ConfigMap of every shipped bundle (models/*) under base/bundles/ with
# `ddnn bundle pack`. Run it after a bundle in models/ changes; test/gitops.test.ts fails until
# then, because each DDNNModel's spec.bundle.sha256 must equal its ConfigMap's bundle digest.
# It also prints each digest: put it in base/<model>.yaml when it changed.
set -euo pipefail
cd "$(dirname "$0")/../.."
npm run build --silent
for model in fashion-deep fashion-3tier fashion-shallow; do
  node dist/cli/main.js bundle pack "models/$model" \
    --out "examples/gitops/base/bundles/$model.yaml" 2>&1 | grep -E '^(packed|spec\.bundle\.sha256)'
done
