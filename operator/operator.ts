import { AsyncLocalStorage } from "node:async_hooks";
import { EventEmitter } from "node:events";
import type { AddressInfo } from "node:net";
import type { KubeConfig } from "@kubernetes/client-node";
import Fastify, { type FastifyInstance } from "fastify";
import {
  MANAGED_BY,
  MANAGED_BY_LABEL,
  type OperatorImages,
  OWNED_KINDS,
  type ProxyEnv,
} from "./builders.js";
import { type BundleFetcher, BundleVerifier } from "./bundle-source.js";
import { DeviceIdentityServer } from "./device-identity.js";
import { EventRecorder } from "./events.js";
import { Informer, objectKey } from "./informer.js";
import { KubeClient, type KubeObject } from "./kube.js";
import { LeaderElector } from "./leader.js";
import { OperatorMetrics } from "./metrics.js";
import { WorkQueue } from "./queue.js";
import { type Logger, type OwnedKind, reconcileModel } from "./reconcile.js";
import { API_VERSION, brokerSecurity, KIND, PLURAL, parseModel } from "./spec.js";
import type { Issuer } from "./x509.js";

export interface LeaderElectionSettings {
  namespace: string;
  name: string;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
}

export interface OperatorOptions {
  kubeConfig: KubeConfig;
  /** Unique per process: the lease holder and the Events' reporting instance. */
  identity: string;
  images: OperatorImages;
  /** Proxy variables written into the tier Pods (the operator's own, see proxyEnvForPods). */
  proxy?: ProxyEnv;
  /** The key the managed brokers' passwords are derived from (docs/security.md). */
  brokerKey?: Uint8Array;
  /** The CA that issues the managed brokers' TLS certificates (without broker.managed.tls). */
  brokerCa?: Issuer;
  /**
   * The endpoint where in-cluster device agents exchange their projected ServiceAccount token for
   * their node's broker identity (operator/device-identity.ts); every replica serves it. Off when
   * undefined.
   */
  deviceIdentity?: {
    port: number;
    host?: string;
    tls?: { certFile: string; keyFile: string };
    /** The endpoint as device agents reach it; without it no device Pod is told of it. */
    url?: string;
    /** PEM of the CA that signs the endpoint's certificate, for the device agents. */
    caPem?: string;
  };
  /** Watch one namespace; all namespaces when undefined. */
  namespace?: string;
  /** false: lead alone (one replica, or tests). */
  leaderElection: LeaderElectionSettings | false;
  httpPort: number;
  httpHost?: string;
  workers?: number;
  resyncMs?: number;
  watchTimeoutSeconds?: number;
  retryBundleMs?: number;
  fetchBundle?: BundleFetcher;
  log?: Logger;
  userAgent?: string;
}

/** One API request made by a reconcile: what the operator does per reconcile. */
export interface RequestRecord {
  verb: string;
  code: number;
}

export interface ReconcileReport {
  key: string;
  result: "success" | "requeue" | "error";
  ms: number;
  requests: RequestRecord[];
  error?: string;
}

export const consoleLogger: Logger = {
  info: (m) => process.stderr.write(`${new Date().toISOString()} info ${m}\n`),
  warn: (m) => process.stderr.write(`${new Date().toISOString()} warn ${m}\n`),
};

/**
 * The DDNNModel controller: watch caches for DDNNModels and the kinds they own, a work queue
 * keyed by model, leader election, and an HTTP server with /healthz, /readyz and /metrics.
 * Emits "reconciled" (ReconcileReport) after each key, and "leading" / "stopped-leading".
 */
export class Operator extends EventEmitter {
  readonly metrics = new OperatorMetrics();
  private readonly client: KubeClient;
  private readonly models: Informer;
  private readonly owned: Record<OwnedKind, Informer>;
  private readonly queue: WorkQueue;
  private readonly bundles: BundleVerifier;
  private readonly events: EventRecorder;
  private readonly elector: LeaderElector | undefined;
  private readonly http: FastifyInstance;
  private readonly identityServer: DeviceIdentityServer | undefined;
  /** Nodes (device identity on): the device nodes' lines in a model's password file. */
  private readonly nodes: Informer | undefined;
  private readonly abort = new AbortController();
  private readonly log: Logger;
  private readonly requests = new AsyncLocalStorage<RequestRecord[]>();
  private resyncTimer: NodeJS.Timeout | undefined;
  private electing: Promise<void> | undefined;
  private leading = false;
  private stopping: Promise<void> | undefined;

  constructor(private readonly options: OperatorOptions) {
    super();
    this.log = options.log ?? consoleLogger;
    this.client = new KubeClient(
      options.kubeConfig,
      options.userAgent ?? `ddnn-operator (${options.identity})`,
      (verb, code) => {
        this.metrics.apiRequests.inc({ verb, code: String(code) });
        this.requests.getStore()?.push({ verb, code });
      },
    );
    this.bundles = new BundleVerifier({ client: this.client, fetch: options.fetchBundle });
    this.events = new EventRecorder(this.client, options.identity, (err) =>
      this.log.warn(`cannot record an Event: ${(err as Error).message}`),
    );
    const watchOptions = (resource: string) => ({
      watchTimeoutSeconds: options.watchTimeoutSeconds ?? 300,
      onError: (err: unknown, retryInMs: number) =>
        this.log.warn(`watch ${resource}: ${(err as Error).message}; retrying in ${retryInMs} ms`),
      onRestart: (reason: string) => this.metrics.watchRestarts.inc({ resource, reason }),
    });
    this.models = new Informer(this.client, {
      resource: { apiVersion: API_VERSION, plural: PLURAL, namespace: options.namespace },
      ...watchOptions(PLURAL),
    }).on((_event, o) => this.queue.add(objectKey(o)));
    const owned = {} as Record<OwnedKind, Informer>;
    for (const k of OWNED_KINDS) {
      owned[k.kind] = new Informer(this.client, {
        resource: { apiVersion: k.apiVersion, plural: k.plural, namespace: options.namespace },
        labelSelector: `${MANAGED_BY_LABEL}=${MANAGED_BY}`,
        ...watchOptions(k.plural),
      }).on((_event, o) => this.enqueueOwner(o));
    }
    this.owned = owned;
    this.queue = new WorkQueue({
      workers: options.workers ?? 2,
      onDone: (key, result, ms, err) => this.done(key, result, ms, err),
    });
    if (options.leaderElection) {
      const le = options.leaderElection;
      this.elector = new LeaderElector(this.client, {
        ...le,
        identity: options.identity,
        onStartedLeading: () => this.startLeading(),
        onStoppedLeading: () => {
          this.log.warn(`lost the lease ${le.namespace}/${le.name}; stopping`);
          this.metrics.leader.set(0);
          this.leading = false;
          this.emit("stopped-leading");
          void this.stop();
        },
        onError: (err) => this.log.warn(`leader election: ${(err as Error).message}`),
      });
    }
    if (options.deviceIdentity) {
      const { port, host, tls } = options.deviceIdentity;
      this.identityServer = new DeviceIdentityServer({
        kube: { client: this.client, model: (ns, name) => this.models.get(ns, name) },
        brokerKey: options.brokerKey,
        port,
        ...(host ? { host } : {}),
        ...(tls ? { tls } : {}),
        log: this.log,
        observe: (result) => this.metrics.deviceIdentities.inc({ result }),
      });
    }
    if (options.deviceIdentity?.url) {
      // A node that joins, leaves or changes labels changes which device nodes a model's broker
      // must know; status heartbeats change nothing of that and enqueue nothing.
      const seen = new Map<string, string>();
      this.nodes = new Informer(this.client, {
        resource: { apiVersion: "v1", plural: "nodes" },
        ...watchOptions("nodes"),
      }).on((event, node) => {
        const name = node.metadata?.name ?? "";
        const labels = event === "DELETED" ? "" : JSON.stringify(node.metadata?.labels ?? {});
        if (seen.get(name) === labels) return;
        if (event === "DELETED") seen.delete(name);
        else seen.set(name, labels);
        // Every model whose broker gives device nodes identities: the secure managed ones.
        for (const m of this.models.list()) {
          const parsed = parseModel(m);
          if (parsed.ok && brokerSecurity(parsed.model).auth) this.queue.add(objectKey(m));
        }
      });
    }
    this.http = Fastify({ logger: false });
    this.http.get("/healthz", async () => ({ status: "ok" }));
    this.http.get("/readyz", async (_req, reply) => {
      const synced = [
        this.models,
        ...Object.values(this.owned),
        ...(this.nodes ? [this.nodes] : []),
      ].every((i) => i.hasSynced);
      if (!synced || this.stopping) return reply.code(503).send({ status: "starting" });
      return { status: "ok", leader: this.leading };
    });
    this.http.get("/metrics", async (_req, reply) => {
      this.metrics.queueDepth.set(this.queue.depth());
      reply.header("Content-Type", this.metrics.registry.contentType);
      return this.metrics.registry.metrics();
    });
  }

  private enqueueOwner(o: KubeObject): void {
    const owner = o.metadata?.ownerReferences?.find(
      (r) => r.controller === true && r.kind === KIND && r.apiVersion.startsWith("fog.ddnn.io/"),
    );
    if (owner && o.metadata?.namespace) this.queue.add(`${o.metadata.namespace}/${owner.name}`);
  }

  private done(key: string, result: ReconcileReport["result"], ms: number, err: unknown): void {
    this.metrics.reconciles.inc({ result });
    this.metrics.reconcileSeconds.observe(ms / 1000);
    this.metrics.queueDepth.set(this.queue.depth());
    if (err)
      this.log.warn(`reconcile ${key} failed (retrying with backoff): ${(err as Error).message}`);
  }

  /** The HTTP server's port (after start). */
  port(): number {
    return (this.http.server.address() as AddressInfo).port;
  }

  /** The device identity endpoint's port (after start), or undefined when it is off. */
  identityPort(): number | undefined {
    return this.identityPortNumber;
  }
  private identityPortNumber: number | undefined;

  isLeader(): boolean {
    return this.leading;
  }

  /** Starts caches, the HTTP server and (as leader) the workers. Resolves once listening. */
  async start(): Promise<void> {
    await this.http.listen({
      port: this.options.httpPort,
      host: this.options.httpHost ?? "0.0.0.0",
    });
    if (this.identityServer) this.identityPortNumber = await this.identityServer.start();
    const signal = this.abort.signal;
    this.models.start(signal);
    for (const i of Object.values(this.owned)) i.start(signal);
    this.nodes?.start(signal);
    if (this.elector) {
      this.electing = this.elector
        .run(signal)
        .catch((err) => this.log.warn(`leader election stopped: ${err}`));
    } else {
      this.startLeading();
    }
  }

  private startLeading(): void {
    if (this.abort.signal.aborted) return;
    this.leading = true;
    this.metrics.leader.set(1);
    this.log.info(`${this.options.identity} is the leader; reconciling`);
    this.emit("leading");
    void Promise.all([
      this.models.synced(),
      ...Object.values(this.owned).map((i) => i.synced()),
      ...(this.nodes ? [this.nodes.synced()] : []),
    ]).then(() => {
      if (this.abort.signal.aborted) return;
      this.queue.run((key) => this.reconcileOnce(key));
      for (const m of this.models.list()) this.queue.add(objectKey(m));
      const resync = this.options.resyncMs ?? 10 * 60_000;
      this.resyncTimer = setInterval(() => this.resync(), resync);
      this.resyncTimer.unref();
    });
  }

  private async reconcileOnce(key: string) {
    const records: RequestRecord[] = [];
    const started = performance.now();
    try {
      const result = await this.requests.run(records, () =>
        reconcileModel(
          {
            client: this.client,
            models: this.models,
            owned: this.owned,
            bundles: this.bundles,
            images: this.options.images,
            ...(this.options.proxy ? { proxy: this.options.proxy } : {}),
            ...(this.options.brokerKey ? { brokerKey: this.options.brokerKey } : {}),
            ...(this.options.brokerCa ? { brokerCa: this.options.brokerCa } : {}),
            ...(this.nodes && this.options.deviceIdentity?.url
              ? {
                  deviceIdentity: {
                    url: this.options.deviceIdentity.url,
                    ...(this.options.deviceIdentity.caPem !== undefined
                      ? { caPem: this.options.deviceIdentity.caPem }
                      : {}),
                  },
                  nodes: this.nodes,
                }
              : {}),
            events: this.events,
            log: this.log,
            retryBundleMs: this.options.retryBundleMs,
          },
          key,
        ),
      );
      this.report(key, result.requeueAfter === undefined ? "success" : "requeue", started, records);
      return result;
    } catch (err) {
      this.report(key, "error", started, records, (err as Error).message);
      throw err;
    }
  }

  private report(
    key: string,
    result: ReconcileReport["result"],
    started: number,
    requests: RequestRecord[],
    error?: string,
  ): void {
    const report: ReconcileReport = { key, result, ms: performance.now() - started, requests };
    if (error) report.error = error;
    if (requests.length > 0) {
      const verbs = new Map<string, number>();
      for (const r of requests) verbs.set(r.verb, (verbs.get(r.verb) ?? 0) + 1);
      this.log.info(
        `reconciled ${key} (${result}) in ${report.ms.toFixed(0)} ms with ${requests.length} API requests (${[...verbs].map(([v, n]) => `${n} ${v}`).join(", ")})`,
      );
    }
    this.emit("reconciled", report);
  }

  /** Enqueues every known model (the periodic resync; tests call it to force a pass). */
  resync(): void {
    for (const m of this.models.list()) this.queue.add(objectKey(m));
  }

  /** Resolves when no key is queued or in flight. */
  whenIdle(): Promise<void> {
    return this.queue.whenIdle();
  }

  /** Graceful shutdown: finish reconciles in flight, release the lease, stop watches and HTTP. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      if (this.resyncTimer) clearInterval(this.resyncTimer);
      await this.queue.stop();
      if (this.elector?.isLeader()) await this.elector.release();
      this.leading = false;
      this.metrics.leader.set(0);
      this.abort.abort();
      await Promise.all([
        this.models.stopped(),
        ...Object.values(this.owned).map((i) => i.stopped()),
        ...(this.nodes ? [this.nodes.stopped()] : []),
      ]);
      await this.electing;
      await this.http.close();
      await this.identityServer?.stop();
      this.client.close();
    })();
    return this.stopping;
  }
}
