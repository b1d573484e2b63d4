/**
 * What the server and gateway programs have in common: a verified bundle, a worker pool, a broker
 * connection, a StageService on the first stage of the tier's range, and /healthz, /readyz,
 * /metrics. The server adds its HTTP inference routes through `plugins`.
 */
import type { FastifyInstance, FastifyPluginAsync } from "fastify";
import type { MqttClient } from "mqtt";
import type { Logger } from "pino";
import type { VerifiedBundle } from "../bundle/read.js";
import type { TierMetrics } from "../metrics.js";
import { type ModelRef, modelKey } from "../topics.js";
import type { Compression, WireDtype } from "../wire/frame.js";
import { StageService } from "./stage-service.js";
import {
  openTier,
  ownBrokerConnection,
  type Resources,
  serveTierHttp,
  startUp,
  type TierBasics,
} from "./startup.js";
import { stageRange } from "./tier.js";
import { WorkerPool } from "./worker-pool.js";

export interface StageTierConfig extends TierBasics {
  stages?: string[] | undefined;
  httpPort: number;
  httpHost: string;
  backend: "auto" | "native" | "wasm";
  dtype: WireDtype;
  compression: Compression;
  sharedSubscriptions: boolean;
  workers: number;
  maxBatch: number;
  maxDelayMs: number;
  maxQueue: number;
  /** Absent: a quarter of maxQueue. 0: no limit. */
  maxInFlightPerClient?: number | undefined;
  maxFrameBytes: number;
}

export interface StageTierSpec {
  /** "server" or "edge": metrics label, reply timings key, client id. */
  readonly tier: string;
  /** Default stage range when the configuration names none. */
  readonly defaultRange: (stages: number) => readonly [number, number];
  /** Stage indices the workers open (default: the range). */
  readonly open?: (range: { from: number; to: number }, stages: number) => number[];
  /** Extra HTTP routes, given what the tier built. */
  readonly plugins?: (ctx: {
    bundle: VerifiedBundle;
    model: ModelRef;
    pool: WorkerPool;
    metrics: TierMetrics;
  }) => FastifyPluginAsync[];
}

export interface RunningTier {
  readonly port: number;
  readonly bundle: VerifiedBundle;
  readonly pool: WorkerPool;
  readonly client: MqttClient;
  readonly metrics: TierMetrics;
  readonly app: FastifyInstance;
  readonly service: StageService;
  /** What the tier holds, released in reverse order by close(). */
  readonly resources: Resources;
  /** Stops HTTP, stops taking requests and answers those in flight, then stops MQTT and workers. */
  close(): Promise<void>;
}

/** What openTier gave: a caller that looked at the bundle first passes it on. */
export type OpenedTier = Awaited<ReturnType<typeof openTier>>;

export function startStageTier(
  config: StageTierConfig,
  spec: StageTierSpec,
  log: Logger,
  opened?: OpenedTier,
): Promise<RunningTier> {
  return startUp(async (resources) => {
    const { bundle, model, policy, metrics } = opened ?? (await openTier(config, spec.tier, log));
    const { manifest } = bundle;
    const k = manifest.stages.length;
    const range = stageRange(manifest, config.stages, spec.defaultRange(k));
    const only =
      spec.open?.(range, k) ??
      Array.from({ length: range.to - range.from + 1 }, (_, i) => range.from + i);
    const pool = resources.own(
      "inference workers",
      await WorkerPool.start({
        bundle,
        only,
        thresholds: policy.thresholds,
        workers: config.workers,
        maxBatch: config.maxBatch,
        maxDelayMs: config.maxDelayMs,
        maxQueue: config.maxQueue,
        backend: config.backend,
        onBatch: (b) => metrics.batchSize.observe(b.size),
        onWorkerExit: (e) => {
          metrics.workerRestarts.inc();
          log.warn(e, "inference worker exited; replacing it");
        },
      }),
      // Finishes what is queued and in flight (the service has drained by then).
      (p) => p.close(),
    );
    metrics.watchPool(pool);
    const client = ownBrokerConnection(
      resources,
      config,
      `ddnn-${spec.tier}-${model.name}-${process.pid}`,
      metrics,
      log,
    );
    const service = new StageService({
      client,
      bundle,
      model,
      pool,
      from: range.from,
      to: range.to,
      sampleShape: pool.sampleShape(range.from),
      tier: spec.tier,
      forward: { dtype: config.dtype, compression: config.compression },
      sharedSubscription: config.sharedSubscriptions,
      maxFrameBytes: config.maxFrameBytes,
      // One client may hold a quarter of the queue: it takes four flooding at once to fill it.
      maxInFlightPerClient: config.maxInFlightPerClient ?? Math.ceil(config.maxQueue / 4),
      metrics,
      log,
    });
    // Stops taking requests and answers those in flight before the connection goes.
    resources.own("request subscription", service, (s) => s.drain());
    service.start();
    const { app, port } = await serveTierHttp(resources, {
      ready: () => [
        ...(pool.readyWorkers === 0 ? ["no inference worker ready"] : []),
        ...(client.connected ? [] : ["broker disconnected"]),
        ...(client.connected && !service.subscribed
          ? ["not subscribed to the request topic yet"]
          : []),
      ],
      registry: metrics.registry,
      plugins: spec.plugins?.({ bundle, model, pool, metrics }) ?? [],
      port: config.httpPort,
      host: config.httpHost,
      bodyLimit: config.maxFrameBytes * 4,
    });
    log.info(
      {
        model: modelKey(model),
        bundle: `${manifest.name} ${manifest.version}`,
        digest: bundle.digest,
        stages: manifest.stages.slice(range.from, range.to + 1).map((s) => s.name),
        subscription: service.subscription,
        workers: config.workers,
        backend: pool.backend,
        port,
      },
      `${spec.tier} ready`,
    );
    return { port, bundle, pool, client, metrics, app, service };
  });
}
