/**
 * vitest global setup of the end-to-end tests (only test/e2e/vitest.config.ts names it): a running cluster (`npm run cluster -- up`) is
 * used as it is and left running; otherwise one is started (DDNN_E2E_NODES nodes, default 2) and
 * stopped at the end, unless DDNN_KEEP_CLUSTER is set.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Cluster, clusterDir } from "../cluster/cluster.js";

/**
 * Two e2e runs on one cluster would delete each other's releases and models: the second refuses
 * to start (scripts/cluster.sh e2e also waits for the first under a lock).
 */
function claim(): () => void {
  const marker = join(clusterDir(), "e2e.pid");
  if (existsSync(marker)) {
    const pid = Number(readFileSync(marker, "utf8"));
    let running = false;
    try {
      process.kill(pid, 0);
      running = pid !== process.pid;
    } catch {
      // A run that died: its marker is stale.
    }
    if (running)
      throw new Error(`another e2e run (pid ${pid}) is using this machine's cluster (${marker})`);
  }
  writeFileSync(marker, String(process.pid));
  return () => rmSync(marker, { force: true });
}

export default async function setup(): Promise<(() => Promise<void>) | undefined> {
  const release = claim();
  if (Cluster.attach()) {
    console.error("e2e: using the running cluster");
    return async () => release();
  }
  const nodes = Number(process.env.DDNN_E2E_NODES ?? 2);
  const cluster = await Cluster.up({ nodes, log: (l) => console.error(`e2e cluster: ${l}`) });
  console.error(`e2e: cluster up in ${((cluster.startupMs ?? 0) / 1000).toFixed(1)} s`);
  return async () => {
    try {
      if (!process.env.DDNN_KEEP_CLUSTER)
        await Cluster.down(undefined, (l) => console.error(`e2e cluster: ${l}`));
    } finally {
      release();
    }
  };
}
