/**
 * The edge tier: runs the middle stage(s) of the bundle on a worker pool; a confident exit answers
 * the device directly, anything else goes on to the next stage's topic with the original replyTo,
 * so the server's answer still goes straight to the device.
 */
import type { FastifyInstance } from "fastify";
import type { MqttClient } from "mqtt";
import type { Logger } from "pino";
import { z } from "zod";
import { openBundleSource } from "../core/bundle/source.js";
import { type FieldTable, intField } from "../core/config.js";
import { type TierMetrics, tierMetrics } from "../core/metrics.js";
import { exitPolicyFor } from "../core/pipeline.js";
import { healthPlugin, httpApp, listen, metricsPlugin } from "../core/runtime/http.js";
import { connectBroker, safeBrokerUrl } from "../core/runtime/mqtt.js";
import { StageService } from "../core/runtime/stage-service.js";
import {
  commonFields,
  commonSchema,
  encodingFields,
  encodingSchema,
  makeLogger,
  resolveModel,
  stageRange,
} from "../core/runtime/tier.js";
import { WorkerPool } from "../core/runtime/worker-pool.js";
import { modelKey } from "../core/topics.js";

export const gatewayFields = {
  ...commonFields,
  ...encodingFields,
  workers: { type: "string", help: "inference worker threads (default 1)" },
  maxBatch: { type: "string", help: "largest micro-batch (default 16)" },
  maxDelayMs: { type: "string", help: "longest wait to fill a batch, ms (default 1)" },
  maxQueue: { type: "string", help: "requests that may wait before overloaded (default 512)" },
  maxFrameBytes: {
    type: "string",
    help: "largest request frame accepted, bytes (default 4194304)",
  },
} satisfies FieldTable;

export const gatewaySchema = z.object({
  ...commonSchema,
  ...encodingSchema,
  workers: intField(1, 64).default(1),
  maxBatch: intField(1, 4096).default(16),
  maxDelayMs: intField(0, 1000).default(1),
  maxQueue: intField(1, 1_000_000).default(512),
  maxFrameBytes: intField(64, 256 * 1024 * 1024).default(4 * 1024 * 1024),
});

export type GatewayConfig = z.infer<typeof gatewaySchema>;

export interface RunningGateway {
  readonly port: number;
  readonly pool: WorkerPool;
  readonly client: MqttClient;
  readonly metrics: TierMetrics;
  readonly app: FastifyInstance;
  close(): Promise<void>;
}

export async function startGateway(
  config: GatewayConfig,
  log: Logger = makeLogger(config.logLevel, "edge"),
): Promise<RunningGateway> {
  const bundle = await openBundleSource(config.bundle, config.bundleDigest);
  const { manifest } = bundle;
  const k = manifest.stages.length;
  if (k < 3 && !config.stages)
    throw new RangeError(`a ${k}-stage bundle has no middle stage for a gateway; pass --stages`);
  const range = stageRange(manifest, config.stages, [1, k - 2]);
  const model = resolveModel(manifest, config.model);
  const policy = exitPolicyFor(manifest, config.threshold);
  const metrics = tierMetrics("edge", modelKey(model));
  const only = Array.from({ length: range.to - range.from + 1 }, (_, i) => range.from + i);
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
  const client = connectBroker({
    url: config.broker,
    clientId: `ddnn-edge-${model.name}-${process.pid}-${Math.random().toString(16).slice(2, 8)}`,
    ...(config.brokerUsername !== undefined ? { username: config.brokerUsername } : {}),
    ...(config.brokerPassword !== undefined ? { password: config.brokerPassword } : {}),
  });
  client.on("connect", () => {
    metrics.brokerConnected.set(1);
    log.info({ broker: safeBrokerUrl(config.broker) }, "connected to the broker");
  });
  client.on("close", () => metrics.brokerConnected.set(0));
  const service = new StageService({
    client,
    bundle,
    model,
    pool,
    from: range.from,
    to: range.to,
    sampleShape: pool.sampleShape(range.from),
    tier: "edge",
    forward: { dtype: config.dtype, compression: config.compression },
    sharedSubscription: config.sharedSubscriptions,
    maxFrameBytes: config.maxFrameBytes,
    metrics,
    log,
  });
  await service.start();
  const app = httpApp();
  await app.register(
    healthPlugin(() => [
      ...(pool.readyWorkers === 0 ? ["no inference worker ready"] : []),
      ...(client.connected ? [] : ["broker disconnected"]),
    ]),
  );
  await app.register(metricsPlugin(metrics.registry));
  const port = await listen(app, config.httpPort, config.httpHost);
  log.info(
    {
      model: modelKey(model),
      stages: manifest.stages.slice(range.from, range.to + 1).map((s) => s.name),
      port,
    },
    "gateway ready",
  );
  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      await service.drain();
      await app.close();
      await pool.close();
      await client.endAsync();
    })();
    return closing;
  };
  return { port, pool, client, metrics, app, close };
}
