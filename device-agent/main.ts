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
import { modelKey, replyTopic, viewsReplyTopic } from "../core/topics.js";
import { readViewsBundle, viewBundle, viewsOf } from "../core/views.js";
import { Agent, type Answer } from "./agent.js";
import { type AgentConfig, IDENTITY_TOKEN_PATH } from "./config.js";
import { fetchDeviceIdentity } from "./identity.js";
import { inferRoute, mqttInput } from "./sources.js";
import { ViewClient } from "./view-client.js";

export interface RunningAgent {
  readonly agent: Agent;
  readonly port: number;
  readonly client: MqttClient;
  readonly metrics: TierMetrics;
  readonly app: FastifyInstance;
  readonly pipeline: Pipeline;
  readonly offload: OffloadClient;
  /** Multi-view bundle: the client that sends this device's view to the fusing gateway. */
  readonly views?: ViewClient;
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
  /**
   * When the replay's first frame is due (unix ms, default at once): devices of a multi-view
   * bundle given the same start replay a capture's views at the same time, like cameras on one
   * trigger.
   */
  replayStartAt?: number;
}

export async function startAgent(
  config: AgentConfig,
  hooks: AgentHooks = {},
  log: Logger = makeLogger(config.logLevel, "device"),
): Promise<RunningAgent> {
  if (config.source.includes("replay") && !config.replayImages)
    throw new ConfigError("--replay-images is required with --source replay");
  if (config.identityUrl !== undefined) {
    // In the cluster with broker auth: the node's identity, before anything connects.
    const grant = await fetchDeviceIdentity({
      url: config.identityUrl,
      tokenFile: config.identityToken ?? IDENTITY_TOKEN_PATH,
      caFile: config.identityCa,
      model: (config.model ?? "").split("/").at(-1) ?? "",
      deviceId: config.deviceId,
      insecure: config.insecure,
      log,
    });
    config = { ...config, brokerUsername: grant.username, brokerPassword: grant.password };
  }
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
    const layout = viewsOf(manifest);
    let deviceBundle = bundle;
    if (layout.count > 1) {
      if (config.view === undefined || config.view >= layout.count)
        throw new ConfigError(
          `--view: ${manifest.name} has ${layout.count} views; say which one this device sees (0..${layout.count - 1})`,
        );
      if (range.to !== 0)
        throw new ConfigError("--stages: a view's device runs stage 0 only (the gateway fuses)");
      const views = await readViewsBundle(bundle.source);
      if (views.bundle.digest !== bundle.digest)
        throw new ConfigError(`${bundle.source} changed while the device started; start again`);
      deviceBundle = viewBundle(views, config.view);
    } else if (config.view !== undefined && config.view !== 0) {
      throw new ConfigError(
        `--view: ${manifest.name} has one view (no views block), not ${config.view + 1}`,
      );
    }
    const only = Array.from({ length: range.to + 1 }, (_, i) => i);
    const stages = await openStages(deviceBundle, {
      only,
      backend: config.backend,
      intraOpThreads: 1,
    });
    const pipeline = resources.own(
      "device stages",
      new Pipeline(deviceBundle, stages, policy),
      (p) => p.release(),
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
    const views =
      layout.count > 1
        ? resources.own(
            "view client",
            new ViewClient({
              client,
              model,
              digest: bundle.digest,
              view: config.view ?? 0,
              replyTo: viewsReplyTopic(model, config.deviceId),
              encoding: { dtype: config.dtype, compression: config.compression },
              idPrefix: config.deviceId,
            }),
            (v) => v.failAll("broker_unreachable", "agent shutting down"),
          )
        : undefined;
    if (views) {
      client.on("close", () =>
        views.failAll("broker_unreachable", "connection to the broker closed"),
      );
      views.start((err) => log.warn({ err }, "could not subscribe to the views reply topic"));
    }
    metrics.watchOffloadsInFlight(() => offload.pending + (views?.pending ?? 0));
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
      ...(views ? { view: { index: config.view ?? 0, client: views } } : {}),
      captureSlotMs: config.captureSlotMs,
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
      plugins: config.source.includes("http")
        ? [inferRoute(agent, manifest, config.captureSlotMs)]
        : [],
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
      const upstream = views ?? offload;
      while (!upstream.subscribed && Date.now() < until) await sleep(10);
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
        ...(views ? { view: config.view, views: layout.count } : {}),
        port,
        backend: stages[0]?.runtime.backend,
      },
      "device agent ready",
    );
    return {
      agent,
      port,
      client,
      metrics,
      app,
      pipeline,
      offload,
      ...(views ? { views } : {}),
      replayDone,
    };
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
  const started = performance.now() + Math.max(0, (hooks.replayStartAt ?? Date.now()) - Date.now());
  let frame = 0;
  let pass = 0;
  if (order.length === 0) return;
  do {
    for (const i of order) {
      if (signal.aborted) break;
      const due = started + (frame++ * 1000) / fps;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait, undefined, { signal }).catch(() => {});
      if (signal.aborted) break;
      const pixels = images.data.subarray(i * per, (i + 1) * per);
      // A view's capture id is the sample index (with the pass when looping): every device
      // replaying its view of the same sample names the same capture.
      const task = agent
        .classify(pixels, pass === 0 ? String(i) : `${i}.${pass}`)
        .then((answer) => hooks.onReplayAnswer?.(answer, i, labels?.[i]))
        .catch((err: unknown) => log.error({ err, item: i }, "replay item failed"))
        .finally(() => pending.delete(task));
      pending.add(task);
    }
    pass++;
  } while (loop && !signal.aborted);
  await Promise.all([...pending]);
}
