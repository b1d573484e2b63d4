import {
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  randomBytes,
  X509Certificate,
} from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { z } from "zod";
import {
  boolField,
  ConfigError,
  field,
  intField,
  loadConfig,
  program,
  programHelp,
  wantsHelp,
} from "../core/config.js";
import { proxyEnvForPods } from "../operator/builders.js";
import { consoleLogger, Operator, type OperatorOptions } from "../operator/operator.js";
import type { Issuer } from "../operator/x509.js";
import { packageRoot } from "./paths.js";

const ms = (what: string, d: number) =>
  field(intField(100, 24 * 3600 * 1000).default(d), { help: what, value: "MS" });

/** `ddnn operator`: every flag, environment variable, file key and default it has. */
export const operatorConfig = program(
  {
    kubeconfig: field(z.string().min(1).optional(), {
      env: "KUBECONFIG",
      help: "kubeconfig file",
      value: "PATH",
      defaultText: "in-cluster, then ~/.kube/config",
    }),
    namespace: field(z.string().min(1).optional(), {
      env: "DDNN_WATCH_NAMESPACE",
      help: "watch one namespace only",
      value: "NS",
      defaultText: "all namespaces",
    }),
    image: field(z.string().min(1).optional(), {
      help: "image of the tier Pods",
      value: "IMAGE",
      defaultText: "ddnn-fog:<version>",
    }),
    brokerImage: field(z.string().min(1).default("eclipse-mosquitto:2"), {
      help: "image of managed brokers",
      value: "IMAGE",
    }),
    brokerKey: field(z.string().min(32, "must be at least 32 characters").optional(), {
      secret: true,
      help: "key every managed broker password is derived from (docs/security.md); a new key rotates them all; without it only models with broker.managed.insecure are built",
    }),
    brokerCaDir: field(z.string().min(1).optional(), {
      help: "directory with tls.crt and tls.key of the CA that issues each managed broker's certificate (the chart's Secret <release>-broker-ca, a kubernetes.io/tls Secret); without it a model needs broker.managed.tls or broker.managed.insecure",
      value: "DIR",
      defaultText: "none",
    }),
    httpPort: field(intField(0, 65535).default(8080), {
      help: "/healthz, /readyz, /metrics (0 picks a free port)",
      value: "PORT",
    }),
    identityPort: field(intField(0, 65535).default(8444), {
      help: "port where in-cluster device agents exchange their ServiceAccount token for their node's broker identity (docs/security.md; 0 picks a free port)",
      value: "PORT",
    }),
    identityTlsDir: field(z.string().min(1).optional(), {
      help: "directory with tls.crt, tls.key and ca.crt (a kubernetes.io/tls Secret, cert-manager's too) for the identity endpoint; its ca.crt goes to the device agents; when tls.crt is missing the endpoint is off; plain HTTP without this flag",
      value: "DIR",
      defaultText: "none: plain HTTP",
    }),
    identityUrl: field(z.string().url("must be a URL").optional(), {
      help: "the identity endpoint's URL as device agents reach it (the chart's Service), written into the device Pods of models with a secure managed broker; without it such models wait with a condition saying so",
      value: "URL",
    }),
    leaderElect: field(boolField.default(true), {
      help: "campaign for the Lease before writing",
      value: "BOOL",
    }),
    leaseNamespace: field(z.string().min(1).optional(), {
      // POD_NAMESPACE: the downward API's namespace of the operator's own Pod (the chart sets it).
      env: ["DDNN_LEASE_NAMESPACE", "POD_NAMESPACE"],
      help: "namespace of the Lease",
      value: "NS",
      defaultText: "the in-cluster namespace, else ddnn-system",
    }),
    leaseName: field(z.string().min(1).default("ddnn-operator"), {
      help: "name of the Lease",
      value: "NAME",
    }),
    leaseDurationMs: ms("how long a Lease holds without renewal", 15_000),
    renewDeadlineMs: ms("the leader gives up when it could not renew for this long", 10_000),
    retryPeriodMs: ms("time between tries to acquire or renew", 2_000),
    workers: field(intField(1, 64).default(2), { help: "models reconciled at once", value: "N" }),
    resyncMs: ms("full resync period", 600_000),
    identity: field(z.string().min(1).optional(), {
      help: "lease holder identity",
      value: "ID",
      defaultText: "<hostname>_<random>",
    }),
  },
  (schema) =>
    schema.refine(
      (c) => c.leaseDurationMs > c.renewDeadlineMs && c.renewDeadlineMs > c.retryPeriodMs,
      {
        message: "needs lease-duration > renew-deadline > retry-period",
        path: ["leaseDurationMs"],
      },
    ),
);

export const operatorHelp = programHelp(operatorConfig, {
  title: "ddnn operator: the Kubernetes controller for DDNNModel (fog.ddnn.io/v1alpha1)",
  usage: "ddnn operator [flags]",
  after:
    "SIGTERM or SIGINT stops it gracefully: reconciles in flight finish and the Lease is released.",
});

const IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

function loadKubeConfig(path: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  if (path) kc.loadFromFile(path);
  else if (process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();
  return kc;
}

/**
 * The device identity endpoint's settings: HTTPS from --identity-tls-dir (its ca.crt handed to the
 * device agents), plain HTTP without that flag, off when the directory has no certificate yet.
 */
function deviceIdentitySettings(cfg: {
  identityPort: number;
  identityTlsDir?: string | undefined;
  identityUrl?: string | undefined;
}): OperatorOptions["deviceIdentity"] {
  const url = cfg.identityUrl;
  if (!cfg.identityTlsDir) return { port: cfg.identityPort, ...(url ? { url } : {}) };
  const certFile = join(cfg.identityTlsDir, "tls.crt");
  if (!existsSync(certFile)) {
    consoleLogger.warn(
      `device identity endpoint off: ${certFile} does not exist (operator.identity.tlsSecret, docs/security.md); models whose device agents need it wait`,
    );
    return undefined;
  }
  const caFile = join(cfg.identityTlsDir, "ca.crt");
  return {
    port: cfg.identityPort,
    tls: { certFile, keyFile: join(cfg.identityTlsDir, "tls.key") },
    ...(url ? { url } : {}),
    ...(existsSync(caFile) ? { caPem: readFileSync(caFile, "utf8") } : {}),
  };
}

/**
 * The broker CA from --broker-ca-dir: its certificate (a CA) and key (of that certificate), or
 * undefined with a warning while the directory has no certificate yet. A bad pair is a ConfigError.
 */
export function brokerCaOf(dir: string | undefined): Issuer | undefined {
  if (!dir) return undefined;
  const certFile = join(dir, "tls.crt");
  if (!existsSync(certFile)) {
    consoleLogger.warn(
      `no broker CA: ${certFile} does not exist (operator.brokerCASecret, docs/security.md); models without broker.managed.tls or insecure wait`,
    );
    return undefined;
  }
  const certPem = readFileSync(certFile, "utf8");
  let ca: X509Certificate;
  let key: KeyObject;
  try {
    ca = new X509Certificate(certPem);
    key = createPrivateKey(readFileSync(join(dir, "tls.key")));
  } catch (err) {
    throw new ConfigError(`--broker-ca-dir ${dir}: ${(err as Error).message}`);
  }
  if (!ca.ca) throw new ConfigError(`--broker-ca-dir ${dir}: tls.crt is not a CA certificate`);
  if (!ca.publicKey.equals(createPublicKey(key)))
    throw new ConfigError(`--broker-ca-dir ${dir}: tls.key is not the key of tls.crt`);
  // The first certificate of the file: what the issued ones name as issuer and tiers trust.
  return { certPem: ca.toString(), key };
}

export async function runOperator(argv: readonly string[]): Promise<number> {
  if (wantsHelp(argv)) {
    process.stdout.write(operatorHelp);
    return 0;
  }
  const cfg = loadConfig(operatorConfig, argv);
  const version = JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")).version;
  const image = cfg.image ?? `ddnn-fog:${version}`;
  const identity = cfg.identity ?? `${hostname()}_${randomBytes(4).toString("hex")}`;
  let leaseNamespace = cfg.leaseNamespace;
  if (!leaseNamespace) {
    try {
      leaseNamespace = readFileSync(IN_CLUSTER_NAMESPACE, "utf8").trim();
    } catch {
      leaseNamespace = "ddnn-system";
    }
  }
  const kc = loadKubeConfig(cfg.kubeconfig);
  const leaderElect = cfg.leaderElect;
  // The configuration, without credentials (the kubeconfig is named, never printed).
  consoleLogger.info(
    `ddnn operator ${version}: server ${kc.getCurrentCluster()?.server} (${cfg.kubeconfig ?? (process.env.KUBERNETES_SERVICE_HOST ? "in-cluster" : "default kubeconfig")}), namespace ${cfg.namespace ?? "(all)"}, image ${image}, broker image ${cfg.brokerImage}, identity ${identity}, leader election ${leaderElect ? `on (Lease ${leaseNamespace}/${cfg.leaseName}, ${cfg.leaseDurationMs}/${cfg.renewDeadlineMs}/${cfg.retryPeriodMs} ms)` : "off"}, workers ${cfg.workers}, resync ${cfg.resyncMs} ms, device identity endpoint port ${cfg.identityPort} (${cfg.identityTlsDir ? "https" : "http"}), broker key ${cfg.brokerKey ? "set" : "not set"}, broker CA ${cfg.brokerCaDir ?? "not set"}`,
  );
  // The tiers download bundles through the same proxy the operator verified them through.
  const { proxy, skipped } = proxyEnvForPods(process.env);
  for (const name of skipped)
    consoleLogger.warn(
      `${name} holds credentials: not copied into the tier Pods; give the Pods a proxy without them or set ${name} in their image`,
    );
  const endpoint = deviceIdentitySettings(cfg);
  const brokerCa = brokerCaOf(cfg.brokerCaDir);
  const operator = new Operator({
    kubeConfig: kc,
    identity,
    images: { image, brokerImage: cfg.brokerImage },
    proxy,
    ...(cfg.brokerKey ? { brokerKey: Buffer.from(cfg.brokerKey, "utf8") } : {}),
    ...(brokerCa ? { brokerCa } : {}),
    namespace: cfg.namespace,
    leaderElection: leaderElect
      ? {
          namespace: leaseNamespace,
          name: cfg.leaseName,
          leaseDurationMs: cfg.leaseDurationMs,
          renewDeadlineMs: cfg.renewDeadlineMs,
          retryPeriodMs: cfg.retryPeriodMs,
        }
      : false,
    httpPort: cfg.httpPort,
    ...(endpoint ? { deviceIdentity: endpoint } : {}),
    workers: cfg.workers,
    resyncMs: cfg.resyncMs,
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
