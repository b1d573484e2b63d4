import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { z } from "zod";
import { proxyEnvForPods } from "../operator/builders.js";
import { consoleLogger, Operator } from "../operator/operator.js";
import { parseFlags } from "./args.js";
import { packageRoot } from "./paths.js";

export const operatorHelp = `ddnn operator: the Kubernetes controller for DDNNModel (fog.ddnn.io/v1alpha1)

Usage: ddnn operator [flags]      (each flag also reads the environment variable named after it)

  --kubeconfig PATH        kubeconfig file (KUBECONFIG); default: in-cluster, then ~/.kube/config
  --namespace NS           watch one namespace only (DDNN_WATCH_NAMESPACE); default: all
  --image IMAGE            image of the tier Pods (DDNN_IMAGE); default ddnn-fog:<version>
  --broker-image IMAGE     image of managed brokers (DDNN_BROKER_IMAGE); default eclipse-mosquitto:2
  --http-port N            /healthz, /readyz, /metrics (DDNN_HTTP_PORT); default 8080; 0 picks one
  --leader-elect BOOL      campaign for the Lease before writing (DDNN_LEADER_ELECT); default true
  --lease-namespace NS     namespace of the Lease (DDNN_LEASE_NAMESPACE, then POD_NAMESPACE, then the
                           in-cluster namespace); default ddnn-system
  --lease-name NAME        (DDNN_LEASE_NAME) default ddnn-operator
  --lease-duration-ms N    (DDNN_LEASE_DURATION_MS) default 15000
  --renew-deadline-ms N    (DDNN_RENEW_DEADLINE_MS) default 10000
  --retry-period-ms N      (DDNN_RETRY_PERIOD_MS) default 2000
  --workers N              models reconciled at once (DDNN_WORKERS); default 2
  --resync-ms N            full resync period (DDNN_RESYNC_MS); default 600000
  --identity ID            lease holder identity (DDNN_IDENTITY); default <hostname>_<random>

SIGTERM or SIGINT stops it gracefully: reconciles in flight finish and the Lease is released.
`;

const flags = {
  kubeconfig: { type: "string" },
  namespace: { type: "string" },
  image: { type: "string" },
  "broker-image": { type: "string" },
  "http-port": { type: "string" },
  "leader-elect": { type: "string" },
  "lease-namespace": { type: "string" },
  "lease-name": { type: "string" },
  "lease-duration-ms": { type: "string" },
  "renew-deadline-ms": { type: "string" },
  "retry-period-ms": { type: "string" },
  workers: { type: "string" },
  "resync-ms": { type: "string" },
  identity: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

const ms = z.coerce.number().int("must be a whole number").min(100, "must be at least 100 ms");
const config = z
  .object({
    kubeconfig: z.string().optional(),
    namespace: z.string().optional(),
    image: z.string().min(1).optional(),
    "broker-image": z.string().min(1).default("eclipse-mosquitto:2"),
    "http-port": z.coerce.number().int().min(0).max(65535).default(8080),
    "leader-elect": z.enum(["true", "false"], "must be true or false").default("true"),
    "lease-namespace": z.string().optional(),
    "lease-name": z.string().min(1).default("ddnn-operator"),
    "lease-duration-ms": ms.default(15_000),
    "renew-deadline-ms": ms.default(10_000),
    "retry-period-ms": ms.default(2_000),
    workers: z.coerce.number().int().min(1).max(64).default(2),
    "resync-ms": ms.default(600_000),
    identity: z.string().min(1).optional(),
    help: z.boolean().default(false),
  })
  .refine(
    (c) =>
      c["lease-duration-ms"] > c["renew-deadline-ms"] &&
      c["renew-deadline-ms"] > c["retry-period-ms"],
    {
      message: "needs lease-duration > renew-deadline > retry-period",
      path: ["lease-duration-ms"],
    },
  );

const ENV: Record<string, string> = {
  kubeconfig: "KUBECONFIG",
  namespace: "DDNN_WATCH_NAMESPACE",
  image: "DDNN_IMAGE",
  "broker-image": "DDNN_BROKER_IMAGE",
  "http-port": "DDNN_HTTP_PORT",
  "leader-elect": "DDNN_LEADER_ELECT",
  "lease-namespace": "DDNN_LEASE_NAMESPACE",
  "lease-name": "DDNN_LEASE_NAME",
  "lease-duration-ms": "DDNN_LEASE_DURATION_MS",
  "renew-deadline-ms": "DDNN_RENEW_DEADLINE_MS",
  "retry-period-ms": "DDNN_RETRY_PERIOD_MS",
  workers: "DDNN_WORKERS",
  "resync-ms": "DDNN_RESYNC_MS",
  identity: "DDNN_IDENTITY",
};

const IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/** Environment values go first so that flags, parsed after them, win. */
function withEnvironment(argv: readonly string[], env: NodeJS.ProcessEnv): string[] {
  const fromEnv: string[] = [];
  for (const [flag, name] of Object.entries(ENV)) {
    const value = env[name];
    const given = argv.some((a) => a === `--${flag}` || a.startsWith(`--${flag}=`));
    if (value !== undefined && value !== "" && !given) fromEnv.push(`--${flag}=${value}`);
  }
  return [...fromEnv, ...argv];
}

function loadKubeConfig(path: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  if (path) kc.loadFromFile(path);
  else if (process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();
  return kc;
}

export async function runOperator(argv: readonly string[]): Promise<number> {
  const cfg = parseFlags(withEnvironment(argv, process.env), flags, config);
  if (cfg.help) {
    process.stdout.write(operatorHelp);
    return 0;
  }
  const version = JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")).version;
  const image = cfg.image ?? `ddnn-fog:${version}`;
  const identity = cfg.identity ?? `${hostname()}_${randomBytes(4).toString("hex")}`;
  let leaseNamespace = cfg["lease-namespace"] ?? process.env.POD_NAMESPACE;
  if (!leaseNamespace) {
    try {
      leaseNamespace = readFileSync(IN_CLUSTER_NAMESPACE, "utf8").trim();
    } catch {
      leaseNamespace = "ddnn-system";
    }
  }
  const kc = loadKubeConfig(cfg.kubeconfig);
  const leaderElect = cfg["leader-elect"] === "true";
  // The configuration, without credentials (the kubeconfig is named, never printed).
  consoleLogger.info(
    `ddnn operator ${version}: server ${kc.getCurrentCluster()?.server} (${cfg.kubeconfig ?? (process.env.KUBERNETES_SERVICE_HOST ? "in-cluster" : "default kubeconfig")}), namespace ${cfg.namespace ?? "(all)"}, image ${image}, broker image ${cfg["broker-image"]}, identity ${identity}, leader election ${leaderElect ? `on (Lease ${leaseNamespace}/${cfg["lease-name"]}, ${cfg["lease-duration-ms"]}/${cfg["renew-deadline-ms"]}/${cfg["retry-period-ms"]} ms)` : "off"}, workers ${cfg.workers}, resync ${cfg["resync-ms"]} ms`,
  );
  // The tiers download bundles through the same proxy the operator verified them through.
  const { proxy, skipped } = proxyEnvForPods(process.env);
  for (const name of skipped)
    consoleLogger.warn(
      `${name} holds credentials: not copied into the tier Pods; give the Pods a proxy without them or set ${name} in their image`,
    );
  const operator = new Operator({
    kubeConfig: kc,
    identity,
    images: { image, brokerImage: cfg["broker-image"] },
    proxy,
    namespace: cfg.namespace,
    leaderElection: leaderElect
      ? {
          namespace: leaseNamespace,
          name: cfg["lease-name"],
          leaseDurationMs: cfg["lease-duration-ms"],
          renewDeadlineMs: cfg["renew-deadline-ms"],
          retryPeriodMs: cfg["retry-period-ms"],
        }
      : false,
    httpPort: cfg["http-port"],
    workers: cfg.workers,
    resyncMs: cfg["resync-ms"],
  });
  let lost = false;
  operator.on("stopped-leading", () => {
    lost = true;
  });
  await operator.start();
  consoleLogger.info(`listening on :${operator.port()} (/healthz, /readyz, /metrics)`);
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      consoleLogger.info(`${signal}: stopping`);
      void operator.stop().then(resolve);
    };
    process.once("SIGTERM", () => stop("SIGTERM"));
    process.once("SIGINT", () => stop("SIGINT"));
    operator.once("stopped-leading", () => void operator.stop().then(resolve));
  });
  // A replica that lost the lease exits non-zero so its Deployment restarts it as a candidate.
  return lost ? 1 : 0;
}
