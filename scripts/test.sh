#!/usr/bin/env bash
# Every check CI runs: install, typecheck, lint and format, TypeScript tests, trainer tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${DDNN_PYTHON:-/usr/bin/python3}
reports=$(mktemp -d)
# onnxruntime-node's telemetry writes under ~/.cache and $TMPDIR and tries to upload: not from tests.
export ORT_DISABLE_TELEMETRY=1
trap 'rm -rf "$reports"' EXIT

bash scripts/setup.sh
echo "== control plane"; bash scripts/control-plane.sh
echo "== helm"; bash scripts/helm.sh
echo "== typecheck"; npx --no-install tsc -p tsconfig.json --noEmit
echo "== lint and format"; npx --no-install biome ci .
echo "== build"; npm run build --silent
echo "== vitest (Node $(node --version))"
vitest_rc=0
runs=("$reports/vitest.json")
npx --no-install vitest run --reporter=default --reporter=json --outputFile.json="${runs[0]}" || vitest_rc=$?
# The machines run Node 20, which is past its end of life; the same suite runs on the supported
# LTS lines too (exact versions from the npm registry, cached under ~/.cache/ddnn-fog).
# DDNN_TEST_NODES="" skips them. A version that cannot be installed fails the run, after the rest.
# Files run one at a time on two cores, so the suite takes ~10 min a run; these files are mostly
# waits on other systems (a 30 s API outage, network faults through NFQUEUE, PyTorch, a fog per
# bundle or per profile pass), run on Node 20 above and, to keep CI under 30 minutes, not again on
# each LTS line (DDNN_TEST_LTS_EXCLUDE="" runs them there too).
lts_exclude=${DDNN_TEST_LTS_EXCLUDE-test/operator/api-outage.test.ts test/profile.test.ts test/netfaults.test.ts test/pytorch-agreement.test.ts test/bundles.test.ts test/profile-views.test.ts test/device-identity.test.ts test/flood.test.ts}
exclude_args=()
for f in $lts_exclude; do exclude_args+=(--exclude "$f"); done
for version in ${DDNN_TEST_NODES-22.23.3 24.21.0}; do
  echo "== vitest (Node v$version)"
  runs+=("$reports/vitest-node$version.json")
  if ! bin=$(bash scripts/node-runtime.sh "$version"); then
    echo "test.sh: cannot install Node $version; its run counts as failed"
    vitest_rc=1
    continue
  fi
  [ -z "$lts_exclude" ] || echo "test.sh: on Node 20 only: $lts_exclude"
  PATH="$(dirname "$bin"):$PATH" npx --no-install vitest run --reporter=dot --reporter=json \
    --outputFile.json="${runs[-1]}" "${exclude_args[@]}" || vitest_rc=$?
done
# The end-to-end tests on a real cluster on this machine (docs/cluster.md), once, on the machine's Node.
echo "== e2e (real Kubernetes cluster)"
runs+=("$reports/e2e.json")
bash scripts/cluster.sh e2e --reporter=default --reporter=json --outputFile.json="${runs[-1]}" || vitest_rc=$?
# The image as a restricted Pod runs it, outside Kubernetes (the e2e run built it): eval, codegen,
# broker + server + agent, the WebAssembly fallback, nothing written (docs/image.md).
echo "== image smoke"
smoke_rc=0
bash scripts/image/smoke.sh || smoke_rc=$?
echo "== pytest (trainer)"
pytest_rc=0
"$python" -m pytest trainer/tests -q -p no:cacheprovider --junitxml="$reports/pytest.xml" || pytest_rc=$?

# One closing line for every run (vitest on each Node version, pytest).
node -e '
const fs = require("node:fs");
const [xml, ...runs] = process.argv.slice(1);
const x = fs.existsSync(xml) ? fs.readFileSync(xml, "utf8") : "";
const attr = (n) => Number((new RegExp(`<testsuite[^>]* ${n}="(\\d+)"`).exec(x) || [])[1] || 0);
let passed = attr("tests") - attr("failures") - attr("errors") - attr("skipped");
let failed = attr("failures") + attr("errors");
let skipped = attr("skipped");
const missing = [];
const failures = [];
const firstLine = (m) => String(m || "").replace(/\x1b\[[0-9;]*m/g, "").trim().split("\n")[0].slice(0, 300);
for (const f of runs) {
  let v;
  try {
    v = JSON.parse(fs.readFileSync(f, "utf8"));
  } catch {
    // A run that left no readable report (it could not start, or crashed) counts as one failure.
    missing.push(f.replace(/.*\//, ""));
    failed += 1;
    continue;
  }
  passed += v.numPassedTests || 0;
  failed += v.numFailedTests || 0;
  skipped += (v.numPendingTests || 0) + (v.numTodoTests || 0);
  // CI keeps only the end of the output: name every failed file and test here, with its first line.
  const run = f.replace(/.*\//, "").replace(/\.json$/, "");
  for (const file of v.testResults || []) {
    const where = String(file.name || "").replace(/^.*?\/((?:test|core|cli|codegen|operator|profile|server|gateway|device-agent|bench)\/)/, "$1");
    const bad = (file.assertionResults || []).filter((a) => a.status === "failed");
    if (file.status === "failed" && bad.length === 0) {
      // A file that failed outside a test (a hook, an import) leaves its tests skipped: count it.
      failed += 1;
      failures.push(`${run}: ${where}: ${firstLine(file.message)}`);
    }
    for (const a of bad) failures.push(`${run}: ${where} > ${a.fullName}: ${firstLine((a.failureMessages || [])[0])}`);
  }
}
for (const m of x.matchAll(/<testcase classname="([^"]*)" name="([^"]*)"[^>]*>\s*<(failure|error) message="([^"]*)"/g)) {
  failures.push(`pytest: ${m[1]}::${m[2]}: ${firstLine(m[4])}`);
}
if (!x) {
  missing.push("pytest.xml");
  failed += 1;
}
const note = missing.length ? ` (no report: ${missing.join(", ")})` : "";
for (const line of failures) console.log(`FAILED ${line}`);
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped${note}`);
' "$reports/pytest.xml" "${runs[@]}"
[ "$smoke_rc" -eq 0 ] || echo "test.sh: scripts/image/smoke.sh failed"
[ "$vitest_rc" -eq 0 ] && [ "$pytest_rc" -eq 0 ] && [ "$smoke_rc" -eq 0 ]
