/**
 * `ddnn up`: the whole fog on one machine. An embedded broker (or --broker), the server pool, a
 * gateway when the bundle has middle stages, and K device agents replaying the evaluation sample
 * like cameras. Ends with the reference paper's Table II for the run, for both configurations:
 * Device&Server through the tiers, and Server Only over HTTP.
 */
import { performance } from "node:perf_hooks";
import { z } from "zod";
import { openBundleSource } from "../core/bundle/source.js";
import { openStages } from "../core/bundle/stages.js";
import {
  boolField,
  brokerUrlField,
  ConfigError,
  type ConfigOf,
  encodingFields,
  field,
  intField,
  loadConfig,
  program,
  programHelp,
  tierFields,
  wantsHelp,
} from "../core/config.js";
import { readIdx } from "../core/dataset/idx.js";
import { accuracyReport, adaptiveDecisions } from "../core/evaluation.js";
import { exitPolicyFor, Pipeline } from "../core/pipeline.js";
import { safeBrokerUrl } from "../core/runtime/mqtt.js";
import { checkBrokerConfig, makeLogger } from "../core/runtime/tier.js";
import { type Summary, summarize } from "../core/stats.js";
import type { Answer } from "../device-agent/agent.js";
import { agentConfig, agentSchema } from "../device-agent/config.js";
import { startAgent } from "../device-agent/main.js";
import { gatewaySchema, startGateway } from "../gateway/gateway.js";
import { serverConfig, serverSchema } from "../server/config.js";
import { startServer } from "../server/server.js";
import { startEmbeddedBroker } from "./broker.js";
import { shipped } from "./paths.js";
import { percent, renderTable } from "./table.js";

const agent = agentConfig.fields;
const server = serverConfig.fields;

/**
 * `ddnn up`: its own fields, and the tiers' fields it passes on to the tiers it starts (their
 * types, environment names and defaults come from the tiers; help and default say where `up`
 * differs).
 */
export const upConfig = program({
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
  sharedSubscriptions: encodingFields.sharedSubscriptions.with({
    help: "with --broker: subscribe through $share/ groups (the embedded broker has none)",
  }),
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
  dtype: encodingFields.dtype,
  compression: encodingFields.compression,
  workers: server.workers.with({ help: "server inference workers" }),
  maxBatch: server.maxBatch.with({ help: "server micro-batch size" }),
  maxDelayMs: server.maxDelayMs.with({ help: "server micro-batch wait, ms" }),
  serverOnly: server.fullModel.with({
    help: "also measure the Server Only configuration over HTTP",
  }),
  json: field(boolField.default(false), {
    switch: true,
    help: "print the final report as one JSON object",
  }),
  logLevel: tierFields.logLevel.withDefault("warn", "log level of the tiers"),
});

interface Row {
  index: number;
  truth: number;
  answer: Answer;
}

export async function runUp(argv: readonly string[], out: (s: string) => void): Promise<number> {
  if (wantsHelp(argv)) {
    out(
      programHelp(upConfig, {
        title: "ddnn up: the whole fog on one machine, ending with the paper's Table II",
        usage: "ddnn up [flags]",
      }),
    );
    return 0;
  }
  const cfg = loadConfig(upConfig, argv);
  if (cfg.brokerCa !== undefined && cfg.broker === undefined)
    throw new ConfigError(
      "--broker-ca needs an mqtts:// --broker (the embedded broker has no TLS)",
    );
  if (cfg.broker !== undefined) checkBrokerConfig({ broker: cfg.broker, brokerCa: cfg.brokerCa });
  const defaults = shipped();
  const bundlePath = cfg.bundle ?? defaults.bundle;
  const bundle = await openBundleSource(bundlePath);
  const { manifest } = bundle;
  const k = manifest.stages.length;
  const images = await readIdx(cfg.images ?? defaults.images);
  const labels = await readIdx(cfg.labels ?? defaults.labels);
  const count = Math.min(cfg.limit ?? Number.POSITIVE_INFINITY, images.shape[0] ?? 0);
  const per = images.data.length / (images.shape[0] ?? 1);
  const progress = (s: string) => process.stderr.write(s);

  // What the model gives in one process: the reference for the distributed run.
  const reference = new Pipeline(
    bundle,
    await openStages(bundle),
    exitPolicyFor(manifest, cfg.threshold),
  );
  const full = await reference.evaluateAll(images.data.subarray(0, count * per), count);
  const names = manifest.stages.map((s) => s.name);
  const expected = accuracyReport(full, reference.policy, labels.data, names);
  await reference.release();

  const embedded = cfg.broker ? undefined : await startEmbeddedBroker();
  const brokerUrl = cfg.broker ?? embedded!.url;
  const shared = embedded ? false : cfg.sharedSubscriptions;
  progress(
    `ddnn up: ${manifest.name} ${manifest.version} (${names.join(" -> ")}), broker ${embedded ? `embedded at ${brokerUrl}` : safeBrokerUrl(brokerUrl)}, ${cfg.devices} devices at ${cfg.fps} fps, ${count} images\n`,
  );

  const common = {
    bundle: bundlePath,
    broker: brokerUrl,
    ...(cfg.brokerCa !== undefined ? { brokerCa: cfg.brokerCa } : {}),
    httpHost: "127.0.0.1",
    httpPort: 0,
    logLevel: cfg.logLevel,
    threshold: cfg.threshold,
    dtype: cfg.dtype,
    compression: cfg.compression,
    sharedSubscriptions: shared,
  };
  const serverStages = k >= 3 ? [names[k - 1]!] : k === 2 ? [names[1]!] : [names[0]!];
  const server = await startServer(
    serverSchema.parse({
      ...common,
      stages: serverStages,
      workers: cfg.workers,
      maxBatch: cfg.maxBatch,
      maxDelayMs: cfg.maxDelayMs,
    }),
    makeLogger(cfg.logLevel, "server"),
  );
  const gateway =
    k >= 3
      ? await startGateway(
          gatewaySchema.parse({ ...common, stages: names.slice(1, k - 1) }),
          makeLogger(cfg.logLevel, "edge"),
        )
      : undefined;

  const rows: Row[] = [];
  const started = performance.now();
  const agents = await Promise.all(
    Array.from({ length: cfg.devices }, (_, d) =>
      startAgent(
        agentSchema.parse({
          ...common,
          deviceId: `camera-${d + 1}`,
          stages: [names[0]!],
          deadlineMs: cfg.deadlineMs,
          source: ["replay"],
          replayImages: cfg.images ?? defaults.images,
          fps: cfg.fps,
        }),
        {
          replayIndices: Array.from({ length: count }, (_, i) => i).filter(
            (i) => i % cfg.devices === d,
          ),
          replayWaitForUpstreamMs: 10_000,
          onReplayAnswer: (answer, index) =>
            rows.push({ index, truth: labels.data[index] ?? 0, answer }),
        },
        makeLogger(cfg.logLevel, "device"),
      ),
    ),
  );
  const ticker = setInterval(
    () => progress(`${liveLine(rows, count, names, performance.now() - started)}\n`),
    1000,
  );
  const allDone = Promise.all(agents.map((a) => a.replayDone));
  let durationTimer: NodeJS.Timeout | undefined;
  const timeout = cfg.duration
    ? new Promise((r) => {
        durationTimer = setTimeout(r, cfg.duration! * 1000);
      })
    : new Promise(() => {});
  await Promise.race([allDone, timeout]);
  clearTimeout(durationTimer);
  await Promise.all(agents.map((a) => a.close()));
  clearInterval(ticker);
  const wallS = (performance.now() - started) / 1000;
  progress(`${liveLine(rows, count, names, wallS * 1000)}\n`);

  // Server Only: the same images, whole model on the server over HTTP (one request per image).
  const serverOnly: { index: number; label: number; serverMs: number; totalMs: number }[] = [];
  if (cfg.serverOnly) {
    const queue = rows.map((r) => r.index);
    const url = `http://127.0.0.1:${server.port}/v2/models/${manifest.name}/infer`;
    const worker = async () => {
      for (let i = queue.shift(); i !== undefined; i = queue.shift()) {
        const t0 = performance.now();
        const res = await fetch(url, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({
            inputs: [
              {
                name: "image",
                shape: [1, ...manifest.input.shape],
                datatype: "UINT8",
                data: Array.from(images.data.subarray(i * per, (i + 1) * per)),
              },
            ],
          }),
        });
        const body = (await res.json()) as {
          outputs?: { name: string; data: number[] }[];
          parameters?: { server_ms: number };
          error?: string;
        };
        if (!res.ok || !body.outputs)
          throw new Error(`Server Only request failed: ${body.error ?? res.status}`);
        const label = body.outputs.find((o) => o.name === "label")?.data[0] ?? -1;
        serverOnly.push({
          index: i,
          label,
          serverMs: body.parameters?.server_ms ?? 0,
          totalMs: performance.now() - t0,
        });
      }
    };
    await Promise.all(Array.from({ length: cfg.devices }, worker));
  }

  await gateway?.close();
  await server.close();
  await embedded?.close();

  const decisions = adaptiveDecisions(full, exitPolicyFor(manifest, cfg.threshold));
  const report = tableII(
    rows,
    serverOnly,
    labels.data,
    names,
    expected,
    full,
    decisions,
    per,
    cfg,
    wallS,
  );
  out(cfg.json ? JSON.stringify(report.json) : report.text);
  return 0;
}

function liveLine(
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
  return `  ${(ms / 1000).toFixed(1)} s  answered ${rows.length}/${count}  ${names.map((n, i) => `${n} ${by[i]}`).join("  ")}  degraded ${degraded}  accuracy ${percent(rows.length ? correct / rows.length : 0)}  recent p50 ${fmt(total.p50)} ms`;
}

function fmt(x: number): string {
  return Number.isFinite(x) ? x.toFixed(3) : "-";
}

function tableII(
  rows: readonly Row[],
  serverOnly: readonly { index: number; label: number; serverMs: number; totalMs: number }[],
  truth: Uint8Array,
  names: readonly string[],
  expected: ReturnType<typeof accuracyReport>,
  full: Awaited<ReturnType<Pipeline["evaluateAll"]>>,
  decisions: ReturnType<typeof adaptiveDecisions>,
  rawBytes: number,
  cfg: ConfigOf<typeof upConfig>,
  wallS: number,
) {
  const n = rows.length;
  const last = names.length - 1;
  const localLabels = full.labels[0]!;
  const correct = rows.filter((r) => r.answer.label === r.truth).length;
  const local = rows.filter((r) => localLabels[r.index] === r.truth).length;
  const reachedLast = rows.filter((r) => r.answer.stageIndex === last && !r.answer.degraded);
  const ideal = rows.filter((r) => full.labels.some((l) => l[r.index] === r.truth)).length;
  const degraded = rows.filter((r) => r.answer.degraded);
  const offloaded = rows.filter((r) => r.answer.bytesSent > 0);
  const agree = rows.filter(
    (r) =>
      r.answer.degraded ||
      (r.answer.stageIndex === decisions.exitStage[r.index] &&
        r.answer.label === decisions.label[r.index]),
  ).length;
  const t = (f: (a: Answer) => number) => summarize(rows.map((r) => f(r.answer)));
  const ds = {
    device: t((a) => a.timings.device),
    server: t((a) => a.timings.upstream),
    comm: t((a) => a.timings.comm),
    total: t((a) => a.timings.total),
  };
  const soCorrect = serverOnly.filter((s) => s.label === truth[s.index]).length;
  const so = {
    server: summarize(serverOnly.map((s) => s.serverMs)),
    comm: summarize(serverOnly.map((s) => s.totalMs - s.serverMs)),
    total: summarize(serverOnly.map((s) => s.totalMs)),
  };
  const bytes = summarize(offloaded.map((r) => r.answer.bytesSent));
  const exitRates = names.map((name, i) => ({
    name,
    rate: n ? rows.filter((r) => r.answer.stageIndex === i && !r.answer.degraded).length / n : 0,
  }));
  const cell = (s: Summary) => `${fmt(s.mean)} / ${fmt(s.p50)} / ${fmt(s.p95)}`;
  const serverAcc = reachedLast.length
    ? reachedLast.filter((r) => r.answer.label === r.truth).length / reachedLast.length
    : null;
  const json = {
    samples: n,
    wallSeconds: wallS,
    devices: cfg.devices,
    fps: cfg.fps,
    encoding: { dtype: cfg.dtype, compression: cfg.compression },
    deviceAndServer: {
      local: n ? local / n : 0,
      server: serverAcc,
      overall: n ? correct / n : 0,
      ideal: n ? ideal / n : 0,
      exitRates: Object.fromEntries(exitRates.map((e) => [e.name, e.rate])),
      degraded: degraded.length,
      agreementWithInProcess: n ? agree / n : 0,
      timingsMs: ds,
      bytesPerOffload: bytes.n ? bytes.mean : null,
      rawImageBytes: rawBytes,
    },
    serverOnly: serverOnly.length
      ? { accuracy: soCorrect / serverOnly.length, timingsMs: { device: 0, ...so } }
      : null,
    inProcess: expected,
  };
  const text = [
    "",
    `Table II for this run: ${n} images, ${cfg.devices} devices at ${cfg.fps} fps, ${wallS.toFixed(1)} s, features as ${cfg.dtype}+${cfg.compression}`,
    "",
    renderTable(
      [
        "configuration",
        "Local",
        "Server",
        "Overall",
        "Ideal",
        "T_Device ms",
        "T_Server ms",
        "T_Comm ms",
        "T_Total ms",
      ],
      [
        [
          "Device&Server",
          percent(json.deviceAndServer.local),
          percent(serverAcc),
          percent(json.deviceAndServer.overall),
          percent(json.deviceAndServer.ideal),
          cell(ds.device),
          cell(ds.server),
          cell(ds.comm),
          cell(ds.total),
        ],
        ...(json.serverOnly
          ? [
              [
                "Server Only",
                "-",
                percent(json.serverOnly.accuracy),
                percent(json.serverOnly.accuracy),
                "-",
                "0",
                cell(so.server),
                cell(so.comm),
                cell(so.total),
              ],
            ]
          : []),
      ],
    ),
    "times: mean / p50 / p95 over all images; Server = upstream compute (edge + server); Comm = round trip less upstream compute",
    "",
    `exits: ${exitRates.map((e) => `${e.name} ${percent(e.rate)}`).join(", ")}; degraded answers ${degraded.length}${degraded.length ? ` (${[...new Set(degraded.map((d) => d.answer.reason))].join(", ")})` : ""}`,
    `bytes per offload: ${bytes.n ? `${Math.round(bytes.mean)} (frame incl. header)` : "no offloads"}; raw image ${rawBytes} bytes`,
    `in-process pipeline on the same images: Overall ${percent(expected.overall)}, Ideal ${percent(expected.ideal)}; the distributed run gave the same exit and label for ${percent(json.deviceAndServer.agreementWithInProcess)} of images (degraded answers count as agreeing)`,
  ].join("\n");
  return { json, text };
}
