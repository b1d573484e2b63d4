/**
 * The server tier: a worker pool behind MQTT (Device&Server configuration) and behind the Open
 * Inference Protocol v2 over HTTP (Server Only configuration: every stage on the server).
 */
import type { FastifyInstance } from "fastify";
import type { MqttClient } from "mqtt";
import type { Logger } from "pino";
import { openBundleSource } from "../core/bundle/source.js";
import { type TierMetrics, tierMetrics } from "../core/metrics.js";
import { exitPolicyFor } from "../core/pipeline.js";
import { healthPlugin, httpApp, listen, metricsPlugin } from "../core/runtime/http.js";
import { connectBroker, safeBrokerUrl } from "../core/runtime/mqtt.js";
import { StageService } from "../core/runtime/stage-service.js";
import { makeLogger, resolveModel, stageRange } from "../core/runtime/tier.js";
import { WorkerPool } from "../core/runtime/worker-pool.js";
import { modelKey } from "../core/topics.js";
import type { ServerConfig } from "./config.js";
import { inferencePlugin } from "./oip.js";

export interface RunningServer {
  readonly port: number;
  readonly pool: WorkerPool;
  readonly client: MqttClient;
  readonly metrics: TierMetrics;
  readonly app: FastifyInstance;
  readonly log: Logger;
  /** Drains in-flight work, then stops HTTP, MQTT and the workers. */
  close(): Promise<void>;
}

export async function startServer(
  config: ServerConfig,
  log: Logger = makeLogger(config.logLevel, "server"),
): Promise<RunningServer> {
  const bundle = await openBundleSource(config.bundle, config.bundleDigest);
  const { manifest } = bundle;
  const model = resolveModel(manifest, config.model);
  const last = manifest.stages.length - 1;
  const range = stageRange(manifest, config.stages, [Math.min(1, last), last]);
  const policy = exitPolicyFor(manifest, config.threshold);
  const metrics = tierMetrics("server", modelKey(model));
  // Workers open every stage: MQTT requests start at `range.from`, Server Only requests at 0.
  const pool = await WorkerPool.start({
    bundle,
    only: manifest.stages.map((_, i) => i),
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
    clientId: `ddnn-server-${model.name}-${process.pid}-${Math.random().toString(16).slice(2, 8)}`,
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
    tier: "server",
    forward: { dtype: config.dtype, compression: config.compression },
    sharedSubscription: config.sharedSubscriptions,
    maxFrameBytes: config.maxFrameBytes,
    metrics,
    log,
  });
  await service.start();

  const app = httpApp(config.maxFrameBytes * 4);
  await app.register(
    healthPlugin(() => [
      ...(pool.readyWorkers === 0 ? ["no inference worker ready"] : []),
      ...(client.connected ? [] : ["broker disconnected"]),
    ]),
  );
  await app.register(metricsPlugin(metrics.registry));
  await app.register(inferencePlugin({ bundle, model, pool, metrics }));
  const port = await listen(app, config.httpPort, config.httpHost);
  log.info(
    {
      model: modelKey(model),
      bundle: `${manifest.name} ${manifest.version}`,
      digest: bundle.digest,
      stages: manifest.stages.slice(range.from, range.to + 1).map((s) => s.name),
      workers: config.workers,
      backend: pool.backend,
      port,
    },
    "server ready",
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
  return { port, pool, client, metrics, app, log, close };
}
