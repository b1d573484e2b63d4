/**
 * `npm run cluster -- up [--nodes N] | down | status` (through scripts/cluster.sh, which builds
 * what the cluster needs first). `up` prints the admin kubeconfig's path on its last line.
 */
import { Cluster } from "./cluster.js";

const usage = "usage: cluster.sh up [--nodes 1|2] | down | status | build";

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const log = (line: string) => console.error(`cluster: ${line}`);
  switch (command) {
    case "up": {
      let nodes = 2;
      for (let i = 0; i < rest.length; i++) {
        if (rest[i] === "--nodes") nodes = Number(rest[++i]);
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
