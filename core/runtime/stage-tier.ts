/**
 * What the server and gateway programs have in common: a verified bundle, a worker pool, a broker
 * connection, a StageService on the first stage of the tier's range, and /healthz, /readyz,
 * /metrics. The server adds its HTTP inference routes through `plugins`.
 */
import type { FastifyInstance, FastifyPluginAsync } from "fastify";
import type { MqttClient } from "mqtt";
import type { Logger } from "pino";
import type { VerifiedBundle } from "../bundle/read.js";
import { openBundleSource } from "../bundle/source.js";
import { type TierMetrics, tierMetrics } from "../metrics.js";
import { exitPolicyFor } from "../pipeline.js";
import { type ModelRef, modelKey } from "../topics.js";
import type { Compression, WireDtype } from "../wire/frame.js";
import { healthPlugin, httpApp, listen, metricsPlugin } from "./http.js";
import { StageService } from "./stage-service.js";
import { checkBrokerConfig, connectTierBroker, resolveModel, stageRange } from "./tier.js";
import { WorkerPool } from "./worker-pool.js";

export interface StageTierConfig {
  bundle: string;
  bundleDigest?: string | undefined;
  model?: string | undefined;
  broker: string;
  brokerUsername?: string | undefined;
  brokerPassword?: string | undefined;
  stages?: string[] | undefined;
  threshold: Record<string, number>;
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
  /** Stops taking requests, answers those in flight, then stops HTTP, workers and MQTT. */
  close(): Promise<void>;
}

export async function startStageTier(
  config: StageTierConfig,
  spec: StageTierSpec,
  log: Logger,
): Promise<RunningTier> {
  checkBrokerConfig(config);
  const bundle = await openBundleSource(config.bundle, config.bundleDigest);
  const { manifest } = bundle;
  const k = manifest.stages.length;
  const range = stageRange(manifest, config.stages, spec.defaultRange(k));
  const model = resolveModel(manifest, config.model);
  const policy = exitPolicyFor(manifest, config.threshold);
  const metrics = tierMetrics(spec.tier, modelKey(model));
  const only =
    spec.open?.(range, k) ??
    Array.from({ length: range.to - range.from + 1 }, (_, i) => range.from + i);
  const pool = await WorkerPool.start({
    bundle,
    only,
    thresholds: policy.thresholds,
    workers: config.workers,
    maxBatch: config.maxBatch,
    maxDelayMs: config.maxDelayMs,
    maxQueue: config.maxQueue,
    backend: config.backend,
    onWorkerExit: (e) => {
      metrics.workerRestarts.inc();
      log.warn(e, "inference worker exited; replacing it");
    },
  });
  let client: MqttClient | undefined;
  let app: FastifyInstance | undefined;
  let service: StageService;
  let port: number;
  try {
    client = connectTierBroker(
      config,
      `ddnn-${spec.tier}-${model.name}-${process.pid}`,
      metrics,
      log,
    );
    const mqtt = client;
    service = new StageService({
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
      metrics,
      log,
    });
    service.start();

    app = httpApp(config.maxFrameBytes * 4);
    await app.register(
      healthPlugin(() => [
        ...(pool.readyWorkers === 0 ? ["no inference worker ready"] : []),
        ...(mqtt.connected ? [] : ["broker disconnected"]),
        ...(mqtt.connected && !service.subscribed
          ? ["not subscribed to the request topic yet"]
          : []),
      ]),
    );
    await app.register(metricsPlugin(metrics.registry));
    for (const plugin of spec.plugins?.({ bundle, model, pool, metrics }) ?? [])
      await app.register(plugin);
    port = await listen(app, config.httpPort, config.httpHost);
  } catch (err) {
    // Nothing half-started may keep the process alive: workers, the reconnecting client, the port.
    await app?.close().catch(() => {});
    client?.end(true);
    await pool.close(0);
    throw err;
  }
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

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      await service.drain();
      await app.close();
      await pool.close();
      // Force when disconnected: unacknowledged QoS 1 messages would hold end() forever.
      await client.endAsync(!client.connected);
    })();
    return closing;
  };
  return { port, bundle, pool, client, metrics, app, service, close };
}
