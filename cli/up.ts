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
  ConfigError,
  type FieldTable,
  fieldHelp,
  intField,
  loadConfig,
  thresholdsField,
} from "../core/config.js";
import { readIdx } from "../core/dataset/idx.js";
import { accuracyReport, adaptiveDecisions } from "../core/evaluation.js";
import { exitPolicyFor, Pipeline } from "../core/pipeline.js";
import { safeBrokerUrl } from "../core/runtime/mqtt.js";
import { checkBrokerConfig, makeLogger } from "../core/runtime/tier.js";
import { type Summary, summarize } from "../core/stats.js";
import { compressions, dtypes } from "../core/wire/frame.js";
import type { Answer } from "../device-agent/agent.js";
import { agentSchema } from "../device-agent/config.js";
import { startAgent } from "../device-agent/main.js";
import { gatewaySchema, startGateway } from "../gateway/gateway.js";
import { serverSchema } from "../server/config.js";
import { startServer } from "../server/server.js";
import { startEmbeddedBroker } from "./broker.js";
import { shipped } from "./paths.js";
import { percent, renderTable } from "./table.js";

const upFields = {
  bundle: { type: "string", help: "bundle (default: the shipped models/fashion-deep)" },
  images: {
    type: "string",
    help: "idx images to replay (default: the shipped 2,000-image sample)",
  },
  labels: { type: "string", help: "idx labels of --images" },
  broker: {
    type: "string",
    help: "use this broker instead of the embedded one (mqtt://host:port)",
  },
  brokerCa: {
    type: "string",
    help: "with an mqtts:// --broker: PEM file of the CA(s) that sign its certificate",
  },
  sharedSubscriptions: {
    type: "string",
    help: "with --broker: subscribe through $share/ groups (default true)",
  },
  devices: { type: "string", help: "device agents (default 4)" },
  fps: { type: "string", help: "images per second per device (default 100)" },
  duration: {
    type: "string",
    help: "stop after this many seconds (default: when the sample ends)",
  },
  limit: { type: "string", help: "replay only the first N images" },
  threshold: {
    type: "string",
    multiple: true,
    help: "exit threshold override stage=value (repeatable)",
  },
  deadlineMs: { type: "string", help: "device deadline for upstream answers, ms (default 250)" },
  dtype: { type: "string", help: "feature encoding on the wire: f32, f16, u8q (default u8q)" },
  compression: { type: "string", help: "none or deflate (default deflate)" },
  workers: { type: "string", help: "server inference workers (default 2)" },
  maxBatch: { type: "string", help: "server micro-batch size (default 32)" },
  maxDelayMs: { type: "string", help: "server micro-batch wait, ms (default 0)" },
  serverOnly: {
    type: "string",
    help: "also measure the Server Only configuration over HTTP (default true)",
  },
  json: { type: "boolean", help: "print the final report as one JSON object" },
  logLevel: { type: "string", help: "log level of the tiers (default warn)" },
} satisfies FieldTable;

const upSchema = z.object({
  bundle: z.string().optional(),
  images: z.string().optional(),
  labels: z.string().optional(),
  broker: z.string().optional(),
  brokerCa: z.string().min(1).optional(),
  sharedSubscriptions: boolField.default(true),
  devices: intField(1, 256).default(4),
  fps: z.coerce.number().positive("must be > 0").max(100_000).default(100),
  duration: z.coerce.number().positive("must be > 0").optional(),
  limit: intField(1, 10_000_000).optional(),
  threshold: thresholdsField.default({}),
  deadlineMs: intField(1, 600_000).default(250),
  dtype: z.enum(dtypes).default("u8q"),
  compression: z.enum(compressions).default("deflate"),
  workers: intField(1, 64).default(2),
  maxBatch: intField(1, 4096).default(32),
  maxDelayMs: z.coerce.number().min(0, "must be >= 0").max(1000, "must be at most 1000").default(0),
  serverOnly: boolField.default(true),
  json: z.boolean().default(false),
  logLevel: z.enum(["fatal", "error", "warn", "info", "debug"]).default("warn"),
});

interface Row {
  index: number;
  truth: number;
  answer: Answer;
}

export async function runUp(argv: readonly string[], out: (s: string) => void): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    out(
      `ddnn up: the whole fog on one machine, ending with the paper's Table II\n\n${fieldHelp(upFields)}\n`,
    );
    return 0;
  }
  const cfg = loadConfig(upSchema, upFields, argv);
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
  cfg: z.infer<typeof upSchema>,
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
