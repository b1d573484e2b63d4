import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["{core,cli,server,gateway,device-agent,operator,codegen,profile,test}/**/*.test.ts"],
    // The real-cluster tests run once, on their own (scripts/cluster.sh e2e; scripts/test.sh).
    exclude: ["test/e2e/**", "**/node_modules/**"],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    pool: "forks",
    // Processes and inference workers run from dist/: rebuild it when a source is newer.
    globalSetup: ["test/support/fresh-dist.ts"],
  },
});
