/**
 * `npm run cluster -- up [--nodes N] [--restart] | down | status` (through scripts/cluster.sh,
 * which builds what the cluster needs first). `up` prints the admin kubeconfig's path on its last
 * line; a cluster that already runs with that many nodes is left as it is unless --restart.
 */
import { Cluster } from "./cluster.js";

const usage = "usage: cluster.sh up [--nodes 1|2] [--restart] | down | status | build";

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const log = (line: string) => console.error(`cluster: ${line}`);
  switch (command) {
    case "up": {
      let nodes = 2;
      let restart = false;
      for (let i = 0; i < rest.length; i++) {
        if (rest[i] === "--restart") restart = true;
        else if (rest[i] === "--nodes") nodes = Number(rest[++i]);
        else if (rest[i]?.startsWith("--nodes=")) nodes = Number(rest[i]!.slice(8));
        else {
          console.error(`cluster: unknown argument ${rest[i]}\n${usage}`);
          return 2;
        }
      }
      if (!Number.isInteger(nodes) || nodes < 1 || nodes > 2) {
        console.error("cluster: --nodes is 1 or 2");
        return 2;
      }
      const running = Cluster.attach();
      if (running && !restart && running.nodes.length === nodes) {
        log("already running (--restart starts it anew)");
        console.error(await running.status());
        console.log(running.kubeconfigPath);
        return 0;
      }
      const cluster = await Cluster.up({ nodes, log });
      console.error(await cluster.status());
      console.log(cluster.kubeconfigPath);
      return 0;
    }
    case "down":
      await Cluster.down(undefined, log);
      return 0;
    case "status": {
      const cluster = Cluster.attach();
      if (!cluster) {
        console.log("cluster: not running");
        return 3;
      }
      console.log(await cluster.status());
      return 0;
    }
    default:
      console.error(usage);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`cluster: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
