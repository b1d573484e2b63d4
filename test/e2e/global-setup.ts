/**
 * vitest global setup of the end-to-end tests (only test/e2e/vitest.config.ts names it): a running cluster (`npm run cluster -- up`) is
 * used as it is and left running; otherwise one is started (DDNN_E2E_NODES nodes, default 2) and
 * stopped at the end, unless DDNN_KEEP_CLUSTER is set.
 */
import { Cluster } from "../cluster/cluster.js";

export default async function setup(): Promise<(() => Promise<void>) | undefined> {
  if (Cluster.attach()) {
    console.error("e2e: using the running cluster");
    return undefined;
  }
  const nodes = Number(process.env.DDNN_E2E_NODES ?? 2);
  const cluster = await Cluster.up({ nodes, log: (l) => console.error(`e2e cluster: ${l}`) });
  console.error(`e2e: cluster up in ${((cluster.startupMs ?? 0) / 1000).toFixed(1)} s`);
  return async () => {
    if (process.env.DDNN_KEEP_CLUSTER) return;
    await Cluster.down(undefined, (l) => console.error(`e2e cluster: ${l}`));
  };
}
