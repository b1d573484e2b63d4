/** Starts a device agent: bundle, device stages, broker connection, offload client, input sources. */
import { setTimeout as sleep } from "node:timers/promises";
import type { FastifyInstance } from "fastify";
import type { MqttClient } from "mqtt";
import type { Logger } from "pino";
import { openStages } from "../core/bundle/stages.js";
import { ConfigError } from "../core/config.js";
import { readIdx } from "../core/dataset/idx.js";
import type { TierMetrics } from "../core/metrics.js";
import { Pipeline } from "../core/pipeline.js";
import { OffloadClient } from "../core/runtime/offload-client.js";
import {
  openTier,
  ownBrokerConnection,
  type Resources,
  serveTierHttp,
  startUp,
} from "../core/runtime/startup.js";
import { makeLogger, stageRange } from "../core/runtime/tier.js";
import { modelKey, replyTopic } from "../core/topics.js";
import { Agent, type Answer } from "./agent.js";
import type { AgentConfig } from "./config.js";
import { inferRoute, mqttInput } from "./sources.js";

export interface RunningAgent {
  readonly agent: Agent;
  readonly port: number;
  readonly client: MqttClient;
  readonly metrics: TierMetrics;
  readonly app: FastifyInstance;
  readonly pipeline: Pipeline;
  readonly offload: OffloadClient;
  /** Resolves when the replay source has answered every image (immediately without one). */
  readonly replayDone: Promise<void>;
  /** What the agent holds, released in reverse order by close(). */
  readonly resources: Resources;
  close(): Promise<void>;
}

export interface AgentHooks {
  /** Called with every answer of the replay source, with the true label when labels were given. */
  onReplayAnswer?(answer: Answer, index: number, truth: number | undefined): void;
  /** Which replay items this agent takes (default all). */
  replayIndices?: readonly number[];
  /**
   * Before replaying, wait up to this long for the upstream path (broker connected, reply topic
   * subscribed), so a measurement does not start with answers degraded by start-up. Default 0:
   * a camera starts at once and answers locally until the broker is there.
   */
  replayWaitForUpstreamMs?: number;
  /** Learn every exit's answer of every sample with probe requests (`Answer.exits`); see Agent. */
  probe?: boolean;
  /** With a slowdown: the device stages' compute measured before, instead of calibrating again. */
  deviceStageMs?: number;
}

export async function startAgent(
  config: AgentConfig,
  hooks: AgentHooks = {},
  log: Logger = makeLogger(config.logLevel, "device"),
): Promise<RunningAgent> {
  if (config.source.includes("replay") && !config.replayImages)
    throw new ConfigError("--replay-images is required with --source replay");
  return startUp(async (resources) => {
    const { bundle, model, policy, metrics } = await openTier(config, "device", log);
    const { manifest } = bundle;
    const range = stageRange(manifest, config.stages, [0, 0]);
    if (range.from !== 0)
      throw new ConfigError("--stages: the device runs the first stage(s) of the bundle");
    const alarms = new Set(
      config.alarm.map((a) => {
        const i = /^\d+$/.test(a) ? Number(a) : manifest.labels.indexOf(a);
        if (i < 0 || i >= manifest.labels.length)
          throw new ConfigError(
            `--alarm: "${a}" is not a label of the bundle (${manifest.labels.join(", ")})`,
          );
        return i;
      }),
    );
    const only = Array.from({ length: range.to + 1 }, (_, i) => i);
    const stages = await openStages(bundle, { only, backend: config.backend, intraOpThreads: 1 });
    const pipeline = resources.own("device stages", new Pipeline(bundle, stages, policy), (p) =>
      p.release(),
    );
    const client = ownBrokerConnection(
      resources,
      config,
      `ddnn-device-${config.deviceId}`,
      metrics,
      log,
    );
    const offload = resources.own(
      "offload client",
      new OffloadClient({
        client,
        model,
        digest: bundle.digest,
        replyTo: replyTopic(model, config.deviceId),
        encoding: { dtype: config.dtype, compression: config.compression },
        idPrefix: config.deviceId,
      }),
      // Whatever still waits for an upstream answer is answered locally.
      (o) => o.failAll("broker_unreachable", "agent shutting down"),
    );
    client.on("close", () => {
      // Requests waiting on a dead connection will not be answered: answer them locally now.
      offload.failAll("broker_unreachable", "connection to the broker closed");
    });
    offload.start((err) => log.warn({ err }, "could not subscribe to the reply topic"));
    metrics.watchOffloadsInFlight(() => offload.pending);
    const agent = new Agent({
      pipeline,
      to: range.to,
      offload,
      client,
      model,
      deviceId: config.deviceId,
      deadlineMs: config.deadlineMs,
      alarms,
      metrics,
      log,
      probe: hooks.probe ?? false,
      deviceSlowdown: config.deviceSlowdown,
    });
    if (config.deviceSlowdown > 1) {
      if (hooks.deviceStageMs !== undefined) agent.calibratedStageMs = hooks.deviceStageMs;
      const ms = hooks.deviceStageMs ?? (await agent.calibrate());
      log.info(
        { stageMs: ms, slowdown: config.deviceSlowdown },
        "device stages calibrated for the slowdown",
      );
    }
    const { app, port } = await serveTierHttp(resources, {
      // Ready as soon as the device stages are loaded: without a broker the agent still answers (degraded).
      ready: () => [],
      registry: metrics.registry,
      plugins: config.source.includes("http") ? [inferRoute(agent, manifest)] : [],
      port: config.httpPort,
      host: config.httpHost,
    });
    if (config.source.includes("mqtt")) {
      resources.own(
        "MQTT input",
        await mqttInput(
          agent,
          client,
          manifest,
          config.inputTopic ?? `ddnn/${model.namespace}/${model.name}/input/${config.deviceId}`,
          log,
        ),
        (stop) => stop(),
      );
    }
    let replayDone: Promise<void> = Promise.resolve();
    if (config.source.includes("replay") && config.replayImages) {
      const images = await readIdx(config.replayImages);
      const labels = config.replayLabels ? await readIdx(config.replayLabels) : undefined;
      const abort = new AbortController();
      const until = Date.now() + (hooks.replayWaitForUpstreamMs ?? 0);
      while (!offload.subscribed && Date.now() < until) await sleep(10);
      replayDone = replay(
        agent,
        images,
        labels?.data,
        config.fps,
        config.loop,
        hooks,
        abort.signal,
        log,
      );
      resources.own("replay", replayDone, async (done) => {
        abort.abort();
        await done.catch(() => {});
      });
    }
    log.info(
      {
        device: config.deviceId,
        model: modelKey(model),
        stages: manifest.stages.slice(0, range.to + 1).map((s) => s.name),
        sources: config.source,
        port,
        backend: stages[0]?.runtime.backend,
      },
      "device agent ready",
    );
    return { agent, port, client, metrics, app, pipeline, offload, replayDone };
  });
}

/** Feeds idx images to the agent at `fps`, each answered concurrently like frames of a camera. */
async function replay(
  agent: Agent,
  images: { shape: readonly number[]; data: Uint8Array },
  labels: Uint8Array | undefined,
  fps: number,
  loop: boolean,
  hooks: AgentHooks,
  signal: AbortSignal,
  log: Logger,
): Promise<void> {
  const count = images.shape[0] ?? 0;
  const per = count ? images.data.length / count : 0;
  const order = hooks.replayIndices ?? Array.from({ length: count }, (_, i) => i);
  const pending = new Set<Promise<void>>();
  const started = performance.now();
  let frame = 0;
  if (order.length === 0) return;
  do {
    for (const i of order) {
      if (signal.aborted) break;
      const due = started + (frame++ * 1000) / fps;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait, undefined, { signal }).catch(() => {});
      if (signal.aborted) break;
      const pixels = images.data.subarray(i * per, (i + 1) * per);
      const task = agent
        .classify(pixels)
        .then((answer) => hooks.onReplayAnswer?.(answer, i, labels?.[i]))
        .catch((err: unknown) => log.error({ err, item: i }, "replay item failed"))
        .finally(() => pending.delete(task));
      pending.add(task);
    }
  } while (loop && !signal.aborted);
  await Promise.all([...pending]);
}
