/**
 * What the operator integration tests share: a control plane with the CRD, the operator's RBAC
 * and the namespaces installed; a loopback HTTP forward proxy that serves bundles for any URL
 * (so examples/ddnnmodel.yaml's http://models.fog.svc/... URL works unmodified); a TCP proxy in
 * front of the API server that can hold traffic; and helpers that play the Deployment and
 * DaemonSet controllers' part of writing workload status.
 */
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { type AddressInfo, connect, createServer as createTcpServer, type Socket } from "node:net";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { KubeClient, type KubeObject } from "../../operator/kube.js";
import {
  ControlPlane,
  type ControlPlaneOptions,
  REPO_ROOT,
  type User,
} from "../cluster/control-plane.js";
import { testBrokerCa, testBrokerKey, writeBrokerCaDir } from "../support/broker-ca.js";
import { DEMO_BUNDLE } from "./demo-bundle.js";

export const DEMO_DIGEST_URL = "http://models.fog.svc/demo-3stage-1.0.0.tar.gz";

export async function startCluster(options: ControlPlaneOptions = {}): Promise<ControlPlane> {
  return ControlPlane.start({
    ...options,
    beforeControllers: async (cp) => {
      await cp.kubectlOk(["apply", "--server-side", "-f", join(REPO_ROOT, "crds")]);
      await cp.kubectlOk(["apply", "-f", join(REPO_ROOT, "operator", "rbac.yaml")]);
      await cp.kubectlOk(["create", "namespace", "fog"]);
      await cp.kubectlOk(["wait", "--for=condition=Established", "crd/ddnnmodels.fog.ddnn.io"]);
      await options.beforeControllers?.(cp);
    },
  });
}

/** A forward proxy (and plain server) answering GETs from an in-memory map of URL -> bytes. */
export class BundleServer {
  readonly files = new Map<string, Uint8Array>();
  readonly hits: string[] = [];
  private server: Server | undefined;

  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      const url = req.url?.startsWith("http") ? req.url : `http://${req.headers.host}${req.url}`;
      this.hits.push(url);
      const body = this.files.get(url);
      if (!body) {
        res.writeHead(404).end("not found");
        return;
      }
      res.writeHead(200, { "Content-Type": "application/gzip", "Content-Length": body.length });
      res.end(body);
    });
    await new Promise<void>((r) => this.server!.listen(0, "127.0.0.1", r));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

export function demoBundleBytes(): Uint8Array {
  return new Uint8Array(readFileSync(DEMO_BUNDLE));
}

export function adminClient(cp: ControlPlane): KubeClient {
  return new KubeClient(cp.kubeConfig("admin"), "ddnn-test-admin");
}

export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 30_000,
  intervalMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v as T;
    } catch (err) {
      lastErr = err;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${(lastErr as Error).message}` : ""}`,
  );
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function getOrUndefined<T = KubeObject>(
  client: KubeClient,
  r: Parameters<KubeClient["get"]>[0],
): Promise<T | undefined> {
  try {
    return await client.get<T>(r);
  } catch (err) {
    if ((err as { status?: number }).status === 404) return undefined;
    throw err;
  }
}

type Workload = KubeObject & {
  spec?: { replicas?: number };
  metadata: { generation?: number; name?: string };
};

/**
 * Writes the status the Deployment controller would write once every replica of the current
 * generation is up (there are no nodes or kubelets in the test cluster).
 */
export async function markDeploymentReady(
  client: KubeClient,
  namespace: string,
  name: string,
): Promise<void> {
  const d = await client.get<Workload>({
    apiVersion: "apps/v1",
    plural: "deployments",
    namespace,
    name,
  });
  const n = d.spec?.replicas ?? 1;
  await client.mergePatch(
    { apiVersion: "apps/v1", plural: "deployments", namespace, name, subresource: "status" },
    {
      status: {
        observedGeneration: d.metadata.generation,
        replicas: n,
        updatedReplicas: n,
        readyReplicas: n,
        availableReplicas: n,
      },
    },
  );
}

/** The status the DaemonSet controller would write with `nodes` matching nodes, all updated and ready. */
export async function markDaemonSetReady(
  client: KubeClient,
  namespace: string,
  name: string,
  nodes: number,
): Promise<void> {
  const ds = await client.get<Workload>({
    apiVersion: "apps/v1",
    plural: "daemonsets",
    namespace,
    name,
  });
  await client.mergePatch(
    { apiVersion: "apps/v1", plural: "daemonsets", namespace, name, subresource: "status" },
    {
      status: {
        observedGeneration: ds.metadata.generation,
        desiredNumberScheduled: nodes,
        currentNumberScheduled: nodes,
        numberMisscheduled: 0,
        numberReady: nodes,
        updatedNumberScheduled: nodes,
        numberAvailable: nodes,
      },
    },
  );
}

/** The operator's requests in the audit log, minus leader election and long-running watches. */
export function operatorRequests(cp: ControlPlane, since = 0, agent?: string) {
  return cp
    .auditEvents()
    .slice(since)
    .filter((e) => e.verb !== "watch" && e.objectRef?.resource !== "leases")
    .filter((e) => agent === undefined || (e.userAgent ?? "").includes(agent));
}

/**
 * A TCP proxy on 127.0.0.1 in front of the API server, as a congested link or a stalled node
 * would be: bytes pass through untouched (TLS stays end to end with the API server), and while
 * stalled every byte, in both directions and on open and new connections alike, is held until
 * release() sends it on in order. A request sent meanwhile reaches the API server late and its
 * answer comes back late; nothing is answered in the API server's place.
 */
export class StallingProxy {
  private server: ReturnType<typeof createTcpServer> | undefined;
  private stalled = false;
  private cutOff = false;
  private readonly sockets = new Set<Socket>();
  private readonly flushes = new Set<() => void>();
  /** Bytes sent on to clients since the last release() (answers that arrived late). */
  deliveredSinceRelease = 0;

  constructor(private readonly target: URL) {}

  /** Starts listening; returns the URL to use in place of the API server's. */
  async start(): Promise<string> {
    this.server = createTcpServer({ allowHalfOpen: true }, (client) => {
      if (this.cutOff) {
        client.resetAndDestroy();
        return;
      }
      const upstream = connect({
        host: this.target.hostname,
        port: Number(this.target.port),
        allowHalfOpen: true,
      });
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => {
          client.destroy();
          upstream.destroy();
        });
      }
      this.forward(client, upstream, false);
      this.forward(upstream, client, true);
    });
    await new Promise<void>((r) => this.server!.listen(0, "127.0.0.1", r));
    return `${this.target.protocol}//127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  private forward(from: Socket, to: Socket, toClient: boolean): void {
    // null stands for the end of the stream: sent on as a FIN once what came before it is.
    const queue: (Buffer | null)[] = [];
    let ended = false;
    const send = (chunk: Buffer | null) => {
      if (to.destroyed) return;
      if (chunk === null) {
        to.end();
        return;
      }
      to.write(chunk);
      if (toClient) this.deliveredSinceRelease += chunk.length;
    };
    const take = (chunk: Buffer | null) => {
      if (this.stalled || queue.length > 0) queue.push(chunk);
      else send(chunk);
    };
    const flush = () => {
      for (const chunk of queue.splice(0)) send(chunk);
      if (ended) this.flushes.delete(flush);
    };
    this.flushes.add(flush);
    const end = () => {
      if (ended) return;
      ended = true;
      take(null);
      if (queue.length === 0) this.flushes.delete(flush);
    };
    from.on("data", take);
    from.on("end", end);
    from.on("close", end);
  }

  /** Holds every byte from now on, on open and new connections. */
  stall(): void {
    this.stalled = true;
  }

  /** Sends on what was held, then lets traffic through again. */
  release(): void {
    this.stalled = false;
    this.deliveredSinceRelease = 0;
    for (const flush of [...this.flushes]) flush();
  }

  /**
   * The API server is gone, as behind a cut link or a dead node: every open connection is reset
   * and every new one is reset as soon as it arrives, until restore().
   */
  cut(): void {
    this.cutOff = true;
    for (const s of this.sockets) s.resetAndDestroy();
  }

  /** Lets new connections through again after cut(). */
  restore(): void {
    this.cutOff = false;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

/** A kubeconfig of `user` that reaches the API server at `server` (a proxy in front of it). */
export function kubeConfigVia(cp: ControlPlane, user: User, server: string): KubeConfig {
  const doc = JSON.parse(readFileSync(cp.kubeconfigPath(user), "utf8")) as {
    clusters: { cluster: { server: string } }[];
  };
  for (const c of doc.clusters) c.cluster.server = server;
  const kc = new KubeConfig();
  kc.loadFromString(JSON.stringify(doc));
  return kc;
}

/**
 * What the chart gives the operator for secure managed brokers (docs/security.md): the broker key
 * and CA, and the device identity endpoint (on loopback, on a free port, at the chart's URL).
 */
export const chartOperatorOptions = () => ({
  brokerKey: testBrokerKey,
  brokerCa: testBrokerCa,
  deviceIdentity: {
    port: 0,
    host: "127.0.0.1",
    url: "https://ddnn-fog-identity.ddnn-system.svc:8444",
  },
});

/** The same for `ddnn operator` processes: flags, and the key in the environment (never a flag). */
export const chartOperatorProcess = () => ({
  args: [
    `--broker-ca-dir=${writeBrokerCaDir()}`,
    "--identity-url=https://ddnn-fog-identity.ddnn-system.svc:8444",
  ],
  env: { DDNN_BROKER_KEY: Buffer.from(testBrokerKey).toString("hex") },
});
