/**
 * The whole fog on one machine, as `ddnn up` and `ddnn profile` run it: an embedded broker (or
 * --broker), the server pool, a gateway when the bundle has middle stages, K device agents
 * replaying the evaluation sample like cameras, and the Server Only configuration (the image over
 * MQTT to a server that runs every stage, and over HTTP).
 */
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import type { Manifest } from "../core/bundle/manifest.js";
import type { VerifiedBundle } from "../core/bundle/read.js";
import { openBundleSource } from "../core/bundle/source.js";
import {
  boolField,
  brokerUrlField,
  ConfigError,
  encodingFields,
  field,
  intField,
  tierFields,
} from "../core/config.js";
import { readIdx } from "../core/dataset/idx.js";
import { preprocess } from "../core/preprocess.js";
import { connectBroker, safeBrokerUrl, whenConnected } from "../core/runtime/mqtt.js";
import { OffloadClient, OffloadError } from "../core/runtime/offload-client.js";
import {
  brokerClientOptions,
  checkBrokerConfig,
  makeLogger,
  resolveModel,
} from "../core/runtime/tier.js";
import { summarize } from "../core/stats.js";
import { replyTopic } from "../core/topics.js";
import { viewsOf } from "../core/views.js";
import type { Compression } from "../core/wire/frame.js";
import { agentConfig, agentSchema } from "../device-agent/config.js";
import { type RunningAgent, startAgent } from "../device-agent/main.js";
import {
  gatewayConfig,
  gatewaySchema,
  type RunningGateway,
  startGateway,
} from "../gateway/gateway.js";
import type { Row, ServerOnlyRow } from "../profile/measure.js";
import { type ServerConfig, serverConfig, serverSchema } from "../server/config.js";
import { type RunningServer, startServer } from "../server/server.js";
import { type EmbeddedBroker, startEmbeddedBroker } from "./broker.js";
import { shipped, shippedViews, viewImagePaths, viewsSample } from "./paths.js";
import { percent } from "./table.js";

const agent = agentConfig.fields;
const server = serverConfig.fields;

/**
 * The fields of a fog on one machine (`ddnn up`, `ddnn profile`), and the tiers' fields passed on
 * to the tiers it starts (their types, environment names and defaults come from the tiers; help and
 * default say where the command differs).
 */
export const localFogFields = {
  bundle: tierFields.bundle.with({
    schema: z.string().min(1).optional(),
    defaultText: "the shipped models/fashion-deep",
  }),
  images: field(z.string().min(1).optional(), {
    help: "idx images to replay",
    value: "PATH",
    defaultText: "the shipped 2,000-image sample",
  }),
  labels: field(z.string().min(1).optional(), { help: "idx labels of --images", value: "PATH" }),
  broker: tierFields.broker.with({
    schema: brokerUrlField.optional(),
    // DDNN_BROKER: what `ddnn up` read before it shared the tiers' name.
    env: [tierFields.broker.options.env as string, "DDNN_BROKER"],
    help: "use this broker instead of the embedded one",
    defaultText: "an embedded broker on a free port",
  }),
  brokerCa: tierFields.brokerCa.with({
    help: "with an mqtts:// --broker: PEM file of the CA(s) that sign its certificate",
  }),
  brokerTlsName: tierFields.brokerTlsName.with({
    help: "with an mqtts:// --broker: the name its certificate carries, when the URL's host is another",
  }),
  brokerUsername: tierFields.brokerUsername.with({
    help: "with --broker: the MQTT user name of every tier and device started here",
  }),
  brokerPassword: tierFields.brokerPassword.with({ help: "with --broker: its MQTT password" }),
  insecure: tierFields.insecure.with({
    help: "with --broker or --attach: accept a plaintext or anonymous broker on another host (the tiers' --insecure)",
  }),
  sharedSubscriptions: encodingFields.sharedSubscriptions.with({
    help: "with --broker: subscribe through $share/ groups (the embedded broker has none)",
  }),
  model: tierFields.model,
  devices: field(intField(1, 256).default(4), { help: "device agents", value: "N" }),
  fps: agent.fps.withDefault(100, "images per second per device"),
  duration: field(z.coerce.number().positive("must be > 0").optional(), {
    help: "stop after this many seconds",
    value: "S",
    defaultText: "when the sample ends",
  }),
  limit: field(intField(1, 10_000_000).optional(), {
    help: "replay only the first N images",
    value: "N",
  }),
  threshold: tierFields.threshold.with({
    // DDNN_THRESHOLD: what `ddnn up` read before it shared the tiers' name.
    env: [tierFields.threshold.options.env as string, "DDNN_THRESHOLD"],
  }),
  deadlineMs: agent.deadlineMs.with({ help: "device deadline for upstream answers, ms" }),
  deviceSlowdown: agent.deviceSlowdown,
  dtype: encodingFields.dtype,
  compression: encodingFields.compression,
  workers: server.workers.with({ help: "server inference workers" }),
  maxBatch: server.maxBatch.with({ help: "server micro-batch size" }),
  maxDelayMs: server.maxDelayMs.with({ help: "server micro-batch wait, ms" }),
  serverOnly: field(boolField.default(true), {
    help: "also measure the Server Only configuration (the image over MQTT to a server running every stage, and over HTTP)",
    value: "BOOL",
  }),
  logLevel: tierFields.logLevel.withDefault("warn", "log level of the tiers"),
  fusionWindowMs: gatewayConfig.fields.fusionWindowMs.with({
    help: "multi-view bundle: how long the gateway waits for the rest of a capture's views, ms",
  }),
};

/** What a local fog is configured with: the values of `localFogFields`. */
export interface LocalFogConfig {
  bundle?: string | undefined;
  images?: string | undefined;
  labels?: string | undefined;
  broker?: string | undefined;
  brokerCa?: string | undefined;
  brokerTlsName?: string | undefined;
  brokerUsername?: string | undefined;
  brokerPassword?: string | undefined;
  /** Accept a plaintext or anonymous broker on another host. */
  insecure: boolean;
  sharedSubscriptions: boolean;
  model?: string | undefined;
  devices: number;
  fps: number;
  duration?: number | undefined;
  limit?: number | undefined;
  threshold: Record<string, number>;
  deadlineMs: number;
  deviceSlowdown: number;
  dtype: "f32" | "f16" | "u8q";
  compression: Compression;
  workers: number;
  maxBatch: number;
  maxDelayMs: number;
  serverOnly: boolean;
  logLevel: "fatal" | "error" | "warn" | "info" | "debug";
  /** Multi-view bundle: the gateway's fusion window, ms (default the gateway's). */
  fusionWindowMs?: number | undefined;
}

/** The bundle and the samples a run replays. */
export interface Workload {
  readonly bundlePath: string;
  readonly bundle: VerifiedBundle;
  readonly manifest: Manifest;
  readonly names: readonly string[];
  readonly imagesPath: string;
  readonly images: { readonly shape: readonly number[]; readonly data: Uint8Array };
  readonly truth: Uint8Array;
  /** Samples replayed: the first `count` of the file. */
  readonly count: number;
  /** Bytes of one raw image. */
  readonly per: number;
}

export async function openWorkload(cfg: LocalFogConfig): Promise<Workload> {
  if (cfg.brokerCa !== undefined && cfg.broker === undefined)
    throw new ConfigError(
      "--broker-ca needs an mqtts:// --broker (the embedded broker has no TLS)",
    );
  if (cfg.broker !== undefined) checkBrokerConfig({ ...cfg, broker: cfg.broker });
  const defaults = shipped();
  const bundlePath = cfg.bundle ?? defaults.bundle;
  const bundle = await openBundleSource(bundlePath);
  const imagesPath = cfg.images ?? defaults.images;
  const images = await readIdx(imagesPath);
  const labels = await readIdx(cfg.labels ?? defaults.labels);
  const count = Math.min(cfg.limit ?? Number.POSITIVE_INFINITY, images.shape[0] ?? 0);
  return {
    bundlePath,
    bundle,
    manifest: bundle.manifest,
    names: bundle.manifest.stages.map((s) => s.name),
    imagesPath,
    images,
    truth: labels.data,
    count,
    per: images.data.length / (images.shape[0] ?? 1),
  };
}

/** A multi-view bundle's workload: view 0's images in `images`, every view's in `views`. */
export interface ViewsWorkload extends Workload {
  /** Every view's images file, in view order. */
  readonly imagePaths: readonly string[];
  /** Every view's raw images of the `count` captures replayed. */
  readonly pixels: readonly Uint8Array[];
}

/**
 * The bundle (`--bundle`, else the shipped multi-view bundle) and one images file per view: the
 * bundle's `eval/` sample, or `--images` with `{view}` in the path, and `--labels`. `views` is
 * the number asked for (`ddnn up --views K`); undefined takes the bundle's.
 */
export async function openViewsWorkload(
  cfg: LocalFogConfig,
  views?: number,
): Promise<ViewsWorkload> {
  if (cfg.broker !== undefined) checkBrokerConfig({ ...cfg, broker: cfg.broker });
  const bundlePath = cfg.bundle ?? shippedViews();
  const bundle = await openBundleSource(bundlePath);
  const { manifest } = bundle;
  const count = viewsOf(manifest).count;
  if (views !== undefined && count !== views)
    throw new ConfigError(
      `--views ${views}: ${manifest.name} has ${count === 1 ? "no views block (one view)" : `${count} views`}`,
    );
  let imagePaths: string[];
  let labelsPath: string;
  if (cfg.images !== undefined && cfg.labels !== undefined) {
    imagePaths = viewImagePaths(cfg.images, count);
    labelsPath = cfg.labels;
  } else {
    const sample = viewsSample(bundlePath, count);
    if (!sample)
      throw new ConfigError(
        `${bundlePath} has no eval/ sample of its ${count} views; give --images (with {view}) and --labels`,
      );
    imagePaths = sample.images;
    labelsPath = sample.labels;
  }
  const images = await Promise.all(imagePaths.map((p) => readIdx(p)));
  const truth = (await readIdx(labelsPath)).data;
  const items = Math.min(truth.length, ...images.map((i) => i.shape[0] ?? 0));
  const replayed = Math.min(cfg.limit ?? Number.POSITIVE_INFINITY, items);
  const first = images[0]!;
  const per = first.data.length / (first.shape[0] ?? 1);
  return {
    bundlePath,
    bundle,
    manifest,
    names: manifest.stages.map((s) => s.name),
    imagesPath: imagePaths[0]!,
    images: first,
    truth,
    count: replayed,
    per,
    imagePaths,
    pixels: images.map((i) => i.data.subarray(0, replayed * per)),
  };
}

/** The tiers of a running local fog, or the broker and server address of one that runs elsewhere. */
export interface LocalFog {
  readonly brokerUrl: string;
  readonly embedded: boolean;
  /** True when the tiers run elsewhere (--attach): only the devices run here. */
  readonly attached: boolean;
  /** The server tier started here; absent when attached. */
  readonly server?: RunningServer;
  /** The server's HTTP address (Server Only over HTTP); absent when attached without one. */
  readonly serverUrl?: string;
  readonly gateway?: RunningGateway;
  /** The Server Only configuration's server: every stage, no early exit, on stage 0's topic. */
  readonly serverOnly?: RunningServer;
  close(): Promise<void>;
}

/** The broker settings given, as the tiers' and connectBroker's options take them. */
function brokerSettings(cfg: LocalFogConfig) {
  return {
    ...(cfg.brokerCa !== undefined ? { brokerCa: cfg.brokerCa } : {}),
    ...(cfg.brokerTlsName !== undefined ? { brokerTlsName: cfg.brokerTlsName } : {}),
    ...(cfg.brokerUsername !== undefined ? { brokerUsername: cfg.brokerUsername } : {}),
    ...(cfg.brokerPassword !== undefined ? { brokerPassword: cfg.brokerPassword } : {}),
  };
}

/** The settings every tier of a local fog shares. */
function commonOf(cfg: LocalFogConfig, w: Workload, brokerUrl: string, shared: boolean) {
  return {
    bundle: w.bundlePath,
    broker: brokerUrl,
    ...brokerSettings(cfg),
    ...(cfg.insecure ? { insecure: true } : {}),
    httpHost: "127.0.0.1",
    httpPort: 0,
    logLevel: cfg.logLevel,
    threshold: cfg.threshold,
    dtype: cfg.dtype,
    compression: cfg.compression,
    sharedSubscriptions: shared,
    ...(cfg.model !== undefined ? { model: cfg.model } : {}),
  };
}

/** The model reference the Server Only server answers under. */
function serverOnlyModel(w: Workload): string {
  return `default/${w.manifest.name}-server-only`;
}

/** Starts the broker (unless --broker), the server and the gateway; `serverOnly` adds that configuration's server. */
export async function startLocalFog(
  cfg: LocalFogConfig,
  w: Workload,
  options: {
    serverOnly?: boolean;
    attach?: { serverUrl?: string | undefined };
    /** Starts the Device&Server server another way (ddnn profile: its own process, to read its CPU). */
    startServer?: (
      config: ServerConfig,
    ) => Promise<{ readonly port: number; close(): Promise<void> }>;
  } = {},
): Promise<LocalFog> {
  const k = w.names.length;
  if (options.attach) {
    if (cfg.broker === undefined)
      throw new ConfigError("--attach needs the --broker of the fog that already runs");
    const url = options.attach.serverUrl?.replace(/\/+$/, "");
    return {
      brokerUrl: cfg.broker,
      embedded: false,
      attached: true,
      ...(url ? { serverUrl: url } : {}),
      close: async () => {},
    };
  }
  let embedded: EmbeddedBroker | undefined;
  const started: { close(): Promise<void> }[] = [];
  const close = async () => {
    for (const s of started.reverse()) await s.close();
    await embedded?.close();
  };
  try {
    embedded = cfg.broker ? undefined : await startEmbeddedBroker();
    const brokerUrl = cfg.broker ?? embedded!.url;
    const common = commonOf(cfg, w, brokerUrl, embedded ? false : cfg.sharedSubscriptions);
    const pool = { workers: cfg.workers, maxBatch: cfg.maxBatch, maxDelayMs: cfg.maxDelayMs };
    const serverStages = k >= 3 ? [w.names[k - 1]!] : k === 2 ? [w.names[1]!] : [w.names[0]!];
    const serverSettings = serverSchema.parse({ ...common, ...pool, stages: serverStages });
    const inProcess = options.startServer
      ? undefined
      : await startServer(serverSettings, makeLogger(cfg.logLevel, "server"));
    const srv = inProcess ?? (await options.startServer!(serverSettings));
    started.push(srv);
    let gateway: RunningGateway | undefined;
    // A multi-view bundle's gateway fuses the views, with or without middle stages to run.
    const views = viewsOf(w.manifest).count > 1;
    if (k >= 3 || (views && k >= 2)) {
      gateway = await startGateway(
        gatewaySchema.parse({
          ...common,
          ...(k >= 3 ? { stages: w.names.slice(1, k - 1) } : {}),
          ...(cfg.fusionWindowMs !== undefined ? { fusionWindowMs: cfg.fusionWindowMs } : {}),
        }),
        makeLogger(cfg.logLevel, "edge"),
      );
      started.push(gateway);
    }
    let serverOnly: RunningServer | undefined;
    if (options.serverOnly && k >= 2) {
      // Threshold 0 at every early exit: the last stage answers every sample. A model name of its
      // own keeps its topics and broker client id apart from the Device&Server tiers'.
      const never = Object.fromEntries(w.names.slice(0, -1).map((n) => [n, 0]));
      serverOnly = await startServer(
        serverSchema.parse({
          ...common,
          ...pool,
          model: serverOnlyModel(w),
          stages: [...w.names],
          threshold: never,
        }),
        makeLogger(cfg.logLevel, "server-only"),
      );
      started.push(serverOnly);
    }
    return {
      brokerUrl,
      embedded: embedded !== undefined,
      attached: false,
      ...(inProcess ? { server: inProcess } : {}),
      serverUrl: `http://127.0.0.1:${srv.port}`,
      ...(gateway ? { gateway } : {}),
      ...(serverOnly ? { serverOnly } : {}),
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

export function describeFog(cfg: LocalFogConfig, w: Workload, fog: LocalFog): string {
  return `${w.manifest.name} ${w.manifest.version} (${w.names.join(" -> ")}), ${fog.attached ? "attached to the tiers on " : ""}broker ${fog.embedded ? `embedded at ${fog.brokerUrl}` : safeBrokerUrl(fog.brokerUrl)}, ${cfg.devices} devices at ${cfg.fps} fps, ${w.count} images${cfg.deviceSlowdown > 1 ? `, device ${cfg.deviceSlowdown}x slower` : ""}`;
}

export interface ReplayOptions {
  /** Learn every exit's answer of every sample (probe requests, not traffic). */
  readonly probe: boolean;
  /** Threshold overrides for this replay (default the configuration's). */
  readonly threshold?: Readonly<Record<string, number>>;
  /** Images per second per device (default the configuration's). */
  readonly fps?: number;
  /** Samples to replay (default the workload's first `count`). */
  readonly indices?: readonly number[];
  readonly onProgress?: (rows: readonly Row[], elapsedMs: number) => void;
  /** With a slowdown: what an earlier replay's agents measured, so every replay slows the same. */
  readonly deviceStageMs?: number | null;
}

/**
 * Starts K device agents that replay the samples at `fps` each (sample i goes to device i mod K),
 * collects every answer, and stops them. The server and gateway answer with their own thresholds:
 * `threshold` here moves the device's exits only, unless the fog was started with the same.
 */
export async function replayDevices(
  cfg: LocalFogConfig,
  w: Workload,
  fog: LocalFog,
  options: ReplayOptions,
): Promise<{ rows: Row[]; wallS: number; deviceStageMs: number | null }> {
  const rows: Row[] = [];
  const indices = options.indices ?? Array.from({ length: w.count }, (_, i) => i);
  const common = commonOf(cfg, w, fog.brokerUrl, fog.embedded ? false : cfg.sharedSubscriptions);
  const started = performance.now();
  const agents: RunningAgent[] = [];
  try {
    const starting = Array.from({ length: cfg.devices }, (_, d) =>
      startAgent(
        agentSchema.parse({
          ...common,
          threshold: options.threshold ?? cfg.threshold,
          deviceId: `camera-${d + 1}`,
          stages: [w.names[0]!],
          deadlineMs: cfg.deadlineMs,
          deviceSlowdown: cfg.deviceSlowdown,
          source: ["replay"],
          replayImages: w.imagesPath,
          fps: options.fps ?? cfg.fps,
        }),
        {
          replayIndices: indices.filter((_, i) => i % cfg.devices === d),
          replayWaitForUpstreamMs: 10_000,
          probe: options.probe,
          onReplayAnswer: (answer, index) =>
            rows.push({ index, truth: w.truth[index] ?? 0, answer, at: performance.now() }),
        },
        makeLogger(cfg.logLevel, "device"),
      ),
    );
    // Started together, like cameras switched on at once; any that did start is closed below.
    const settled = await Promise.allSettled(starting);
    for (const s of settled) if (s.status === "fulfilled") agents.push(s.value);
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === "rejected");
    if (failed) throw failed.reason;
    const ticker = options.onProgress
      ? setInterval(() => options.onProgress?.(rows, performance.now() - started), 1000)
      : undefined;
    const allDone = Promise.all(agents.map((a) => a.replayDone));
    let durationTimer: NodeJS.Timeout | undefined;
    const timeout = cfg.duration
      ? new Promise((r) => {
          durationTimer = setTimeout(r, cfg.duration! * 1000);
        })
      : new Promise(() => {});
    await Promise.race([allDone, timeout]);
    clearTimeout(durationTimer);
    clearInterval(ticker);
  } finally {
    await Promise.all(agents.map((a) => a.close()));
  }
  const wallMs = performance.now() - started;
  options.onProgress?.(rows, wallMs);
  const calibrated = agents.map((a) => a.agent.calibratedStageMs).filter((x) => x > 0);
  return {
    rows,
    wallS: wallMs / 1000,
    // What the slowdown multiplies: the device stages' compute on an idle thread (median of the agents').
    deviceStageMs: calibrated.length
      ? calibrated.sort((a, b) => a - b)[Math.floor(calibrated.length / 2)]!
      : null,
  };
}

/**
 * A multi-view bundle's devices: K agents, agent v replaying view v's images (`imagePaths[v]`) of
 * every sample from one shared start, like K cameras on one trigger; each sample is one capture
 * (its index the capture id). Every device's answer comes back as a row, by view.
 */
export async function replayViewDevices(
  cfg: LocalFogConfig,
  w: Workload,
  fog: LocalFog,
  imagePaths: readonly string[],
  options: {
    readonly onProgress?: (rows: readonly Row[], elapsedMs: number) => void;
  } = {},
): Promise<{ rows: Row[][]; wallS: number }> {
  const rows: Row[][] = imagePaths.map(() => []);
  const indices = Array.from({ length: w.count }, (_, i) => i);
  const common = commonOf(cfg, w, fog.brokerUrl, fog.embedded ? false : cfg.sharedSubscriptions);
  const started = performance.now();
  const agents: RunningAgent[] = [];
  // Far enough ahead for every agent to load its view and subscribe.
  const startAt = Date.now() + 3000;
  try {
    const settled = await Promise.allSettled(
      imagePaths.map((images, v) =>
        startAgent(
          agentSchema.parse({
            ...common,
            deviceId: `camera-${v + 1}`,
            view: v,
            stages: [w.names[0]!],
            deadlineMs: cfg.deadlineMs,
            deviceSlowdown: cfg.deviceSlowdown,
            source: ["replay"],
            replayImages: images,
            fps: cfg.fps,
          }),
          {
            replayIndices: indices,
            replayWaitForUpstreamMs: 10_000,
            replayStartAt: startAt,
            onReplayAnswer: (answer, index) =>
              rows[v]!.push({ index, truth: w.truth[index] ?? 0, answer, at: performance.now() }),
          },
          makeLogger(cfg.logLevel, "device"),
        ),
      ),
    );
    for (const s of settled) if (s.status === "fulfilled") agents.push(s.value);
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === "rejected");
    if (failed) throw failed.reason;
    const ticker = options.onProgress
      ? setInterval(() => options.onProgress?.(rows[0]!, performance.now() - started), 1000)
      : undefined;
    let durationTimer: NodeJS.Timeout | undefined;
    const timeout = cfg.duration
      ? new Promise((r) => {
          durationTimer = setTimeout(r, cfg.duration! * 1000);
        })
      : new Promise(() => {});
    await Promise.race([Promise.all(agents.map((a) => a.replayDone)), timeout]);
    clearTimeout(durationTimer);
    clearInterval(ticker);
  } finally {
    await Promise.all(agents.map((a) => a.close()));
  }
  const wallMs = performance.now() - started;
  options.onProgress?.(rows[0]!, wallMs);
  return { rows, wallS: wallMs / 1000 };
}

/** One progress line: answers so far, by exit, degraded, accuracy, recent median T_Total. */
export function liveLine(
  rows: readonly Row[],
  count: number,
  names: readonly string[],
  ms: number,
): string {
  const by = names.map(
    (n) => rows.filter((r) => r.answer.stage === n && !r.answer.degraded).length,
  );
  const degraded = rows.filter((r) => r.answer.degraded).length;
  const correct = rows.filter((r) => r.answer.label === r.truth).length;
  const total = summarize(rows.slice(-200).map((r) => r.answer.timings.total));
  return `  ${(ms / 1000).toFixed(1)} s  answered ${rows.length}/${count}  ${names.map((n, i) => `${n} ${by[i]}`).join("  ")}  degraded ${degraded}  accuracy ${percent(rows.length ? correct / rows.length : 0)}  recent p50 ${Number.isFinite(total.p50) ? total.p50.toFixed(3) : "-"} ms`;
}

/** Calls `each(i)` for the samples of `devices` cameras, each camera at `fps`, concurrently. */
async function paced(
  indices: readonly number[],
  devices: number,
  fps: number,
  each: (index: number) => Promise<void>,
): Promise<void> {
  await Promise.all(
    Array.from({ length: devices }, async (_, d) => {
      const mine = indices.filter((_, i) => i % devices === d);
      const start = performance.now();
      const pending: Promise<void>[] = [];
      for (let f = 0; f < mine.length; f++) {
        const wait = start + (f * 1000) / fps - performance.now();
        if (wait > 0) await sleep(wait);
        pending.push(each(mine[f]!));
      }
      await Promise.all(pending);
    }),
  );
}

/**
 * Server Only over MQTT, as the paper measured it: each camera sends the preprocessed image
 * (float32, the model's input) to stage 0's topic, where the Server Only server runs every stage.
 */
export async function serverOnlyMqtt(
  cfg: LocalFogConfig,
  w: Workload,
  fog: LocalFog,
  indices: readonly number[],
): Promise<ServerOnlyRow[]> {
  if (!fog.serverOnly) return [];
  const model = resolveModel(w.manifest, serverOnlyModel(w));
  const client = connectBroker({
    url: fog.brokerUrl,
    clientId: `ddnn-server-only-${process.pid}`,
    ...brokerClientOptions(cfg),
  });
  const rows: ServerOnlyRow[] = [];
  try {
    await whenConnected(client);
    const offload = new OffloadClient({
      client,
      model,
      digest: w.bundle.digest,
      replyTo: replyTopic(model, `server-only-${process.pid}`),
      encoding: { dtype: "f32", compression: "none" },
      idPrefix: "server-only",
    });
    offload.start();
    const until = Date.now() + 10_000;
    while (!offload.subscribed && Date.now() < until) await sleep(10);
    const first = { index: 0, name: w.names[0]! };
    const dims = [1, ...w.manifest.input.shape];
    await paced(indices, cfg.devices, cfg.fps, async (i) => {
      const t0 = performance.now();
      const x = preprocess(w.manifest.input, w.images.data.subarray(i * w.per, (i + 1) * w.per), 1);
      try {
        const reply = await offload.offload(first, x, dims, Date.now() + cfg.deadlineMs);
        const h = reply.header;
        const serverMs = h.timings.server ?? 0;
        rows.push({
          index: i,
          truth: w.truth[i] ?? 0,
          label: h.label,
          stage: h.stage,
          serverMs,
          commMs: Math.max(0, reply.roundTripMs - serverMs),
          totalMs: performance.now() - t0,
          bytes: reply.bytesSent,
        });
      } catch (err) {
        rows.push({
          index: i,
          truth: w.truth[i] ?? 0,
          label: -1,
          stage: -1,
          serverMs: Number.NaN,
          commMs: Number.NaN,
          totalMs: performance.now() - t0,
          bytes: 0,
          failed: err instanceof OffloadError ? err.reason : (err as Error).message,
        });
      }
    });
    offload.failAll("broker_unreachable", "done");
  } finally {
    await client.endAsync();
  }
  return rows;
}

/** Server Only over HTTP (Open Inference Protocol v2), one request per image from each camera. */
export async function serverOnlyHttp(
  cfg: LocalFogConfig,
  w: Workload,
  fog: LocalFog,
  indices: readonly number[],
): Promise<ServerOnlyRow[]> {
  const rows: ServerOnlyRow[] = [];
  if (!fog.serverUrl) return [];
  const model = resolveModel(w.manifest, cfg.model).name;
  const url = `${fog.serverUrl}/v2/models/${model}/infer`;
  await paced(indices, cfg.devices, cfg.fps, async (i) => {
    const t0 = performance.now();
    const data = Array.from(w.images.data.subarray(i * w.per, (i + 1) * w.per));
    const body = JSON.stringify({
      inputs: [{ name: "image", shape: [1, ...w.manifest.input.shape], datatype: "UINT8", data }],
    });
    const res = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    const reply = (await res.json()) as {
      outputs?: { name: string; data: number[] }[];
      parameters?: { server_ms?: number };
      error?: string;
    };
    const totalMs = performance.now() - t0;
    const label = reply.outputs?.find((o) => o.name === "label")?.data[0];
    const serverMs = reply.parameters?.server_ms ?? Number.NaN;
    rows.push({
      index: i,
      truth: w.truth[i] ?? 0,
      label: res.ok && label !== undefined ? label : -1,
      stage: w.names.length - 1,
      serverMs,
      commMs: Math.max(0, totalMs - serverMs),
      totalMs,
      bytes: Buffer.byteLength(body),
      ...(res.ok && label !== undefined ? {} : { failed: reply.error ?? String(res.status) }),
    });
  });
  return rows;
}
