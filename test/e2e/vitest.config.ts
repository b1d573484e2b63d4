/**
 * The end-to-end tests on a real cluster (docs/cluster.md): `bash scripts/cluster.sh e2e` builds
 * what they need and runs vitest with this config. They run once, in order, in one process;
 * `DDNN_E2E=1` is what lets them run (the repository's main vitest run collects them and skips).
 */
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

export default defineConfig({
  root: fileURLToPath(new URL("../..", import.meta.url)),
  test: {
    include: ["test/e2e/**/*.test.ts"],
    // NO_PROXY: the tests' own requests go to Pod IPs on this machine, never through a proxy.
    env: {
      DDNN_E2E: "1",
      ORT_DISABLE_TELEMETRY: "1",
      NO_PROXY: "10.99.0.0/24,10.96.0.0/24,10.244.0.0/16,127.0.0.0/8,localhost",
      no_proxy: "10.99.0.0/24,10.96.0.0/24,10.244.0.0/16,127.0.0.0/8,localhost",
    },
    testTimeout: 300_000,
    hookTimeout: 600_000,
    pool: "forks",
    fileParallelism: false,
    sequence: { concurrent: false },
    // dist/ for `ddnn eval`; then the cluster (started here, or the one `cluster.sh up` left).
    globalSetup: ["test/support/fresh-dist.ts", "test/e2e/global-setup.ts"],
  },
});
