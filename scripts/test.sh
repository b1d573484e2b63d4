#!/usr/bin/env bash
# Every check CI runs: install, typecheck, lint and format, TypeScript tests, trainer tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${DDNN_PYTHON:-/usr/bin/python3}
reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT

bash scripts/setup.sh
echo "== control plane"; bash scripts/control-plane.sh
echo "== typecheck"; npx --no-install tsc -p tsconfig.json --noEmit
echo "== lint and format"; npx --no-install biome ci .
echo "== build"; npm run build --silent
echo "== vitest"
vitest_rc=0
npx --no-install vitest run --reporter=default --reporter=json --outputFile.json="$reports/vitest.json" || vitest_rc=$?
echo "== pytest (trainer)"
pytest_rc=0
"$python" -m pytest trainer/tests -q -p no:cacheprovider --junitxml="$reports/pytest.xml" || pytest_rc=$?

# One closing line for both runners.
node -e '
const fs = require("node:fs");
const v = fs.existsSync(process.argv[1]) ? JSON.parse(fs.readFileSync(process.argv[1], "utf8")) : {};
const x = fs.existsSync(process.argv[2]) ? fs.readFileSync(process.argv[2], "utf8") : "";
const attr = (n) => Number((new RegExp(`<testsuite[^>]* ${n}="(\\d+)"`).exec(x) || [])[1] || 0);
const failed = (v.numFailedTests || 0) + attr("failures") + attr("errors");
const skipped = (v.numPendingTests || 0) + (v.numTodoTests || 0) + attr("skipped");
const passed = (v.numPassedTests || 0) + attr("tests") - attr("failures") - attr("errors") - attr("skipped");
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
' "$reports/vitest.json" "$reports/pytest.xml"
[ "$vitest_rc" -eq 0 ] && [ "$pytest_rc" -eq 0 ]
