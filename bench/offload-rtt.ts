/**
 * Offload round trip through a real Mosquitto on loopback: the device agent's OffloadClient ->
 * Mosquitto -> `ddnn server` (StageService, WorkerPool, one worker thread computes) -> Mosquitto
 * -> the device, against a bare MQTT echo of a payload of the same size (plain mqtt.js clients
 * with TCP_NODELAY, the echo in its own process, QoS 1 both ways like the real requests) measured
 * in the same run, in interleaved rounds. One request in flight at a time.
 *
 *   node dist/bench/offload-rtt.js [--bundle DIR] [--requests N] [--rounds R] [--warmup W]
 *                                  [--dtype u8q] [--compression deflate]
 *
 * The latency goal is measured with the server's --max-delay-ms 0 (a lone request is dispatched
 * at once instead of waiting for a batch to fill); the server's default max delay is reported
 * next to it. Goal: p50(offload) / p50(echo) <= 1.5.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { packageRoot } from "../cli/paths.js";
import { renderTable } from "../cli/table.js";
import { type Summary, summarize } from "../core/stats.js";
import { parseModelRef } from "../core/topics.js";
import { type Compression, encodeFrame, type WireDtype } from "../core/wire/frame.js";
import { encodeTensor } from "../core/wire/tensor.js";
import { serverSchema } from "../server/config.js";
import { type Device, startDevice } from "./support/devices.js";
import { startMosquitto } from "./support/mosquitto.js";
import { connected, plainClient } from "./support/plain-mqtt.js";
import { printGoals, ratio, round } from "./support/report.js";
import { bundlePath, loadSample } from "./support/sample.js";
import { type ServerProcess, startServerProcess } from "./support/server-process.js";

const { values } = parseArgs({
  options: {
    bundle: { type: "string" },
    requests: { type: "string", default: "1000" },
    rounds: { type: "string", default: "5" },
    warmup: { type: "string", default: "300" },
    dtype: { type: "string", default: "u8q" },
    compression: { type: "string", default: "deflate" },
    workers: { type: "string", default: "2" },
    "time-limit-s": { type: "string", default: "240" },
  },
});
const requests = Number(values.requests);
const rounds = Number(values.rounds);
const warmup = Number(values.warmup);
const encoding = {
  dtype: values.dtype as WireDtype,
  compression: values.compression as Compression,
};
const workers = Number(values.workers);
const deadlineAt = Date.now() + Number(values["time-limit-s"]) * 1000;
const defaultDelay = serverSchema.shape.maxDelayMs.parse(undefined);

const bundle = bundlePath(values.bundle);
const sample = await loadSample({ bundle, only: [0] });
const { pipeline } = sample;
const manifest = pipeline.manifest;
const work = sample.offloaded.slice(0, 512);
if (work.length === 0) throw new Error("the device exit answered every sample: nothing to offload");
const next = { index: 1, name: manifest.stages[1]!.name };
await pipeline.release();

const broker = await startMosquitto();
const cleanups: (() => Promise<unknown>)[] = [() => broker.stop()];
const cleanup = async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
};

interface Config {
  readonly name: string;
  readonly server?: ServerProcess;
  readonly device?: Device;
  readonly maxDelayMs?: number;
  /** Publish to reply (the echo: publish to receipt), ms. */
  readonly samples: number[];
  /** From the offload() call (encoding included) to the resolved reply, ms. */
  readonly calls: number[];
  readonly serverMs: number[];
  readonly queueMs: number[];
  readonly payloadBytes: number[];
  readonly errors: Map<string, number>;
}

try {
  // Two servers on the same broker under different model names, so rounds can interleave.
  const configs: Config[] = [];
  const echoIn = "bench/echo/req";
  const echoOut = `bench/echo/reply/${process.pid}`;
  const echoChild: ChildProcess = spawn(
    process.execPath,
    [
      join(packageRoot(), "dist", "bench", "support", "echo.js"),
      "--broker",
      broker.url,
      "--in",
      echoIn,
      "--out",
      echoOut,
    ],
    { stdio: ["ignore", "ignore", "inherit", "ipc"] },
  );
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        if (echoChild.exitCode !== null) return resolve();
        echoChild.once("exit", () => resolve());
        echoChild.kill("SIGTERM");
      }),
  );
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("echo process did not start")), 15_000);
    echoChild.once("message", () => {
      clearTimeout(t);
      resolve();
    });
    echoChild.once("exit", (c) => reject(new Error(`echo process exited (${c})`)));
  });
  configs.push({
    name: "bare MQTT echo",
    samples: [],
    calls: [],
    serverMs: [],
    queueMs: [],
    payloadBytes: [],
    errors: new Map(),
  });
  for (const [label, delay] of [
    ["offload, server --max-delay-ms 0", 0],
    [`offload, server default --max-delay-ms (${defaultDelay})`, undefined],
  ] as const) {
    const model = parseModelRef(`bench/rtt${configs.length}`);
    const server = await startServerProcess({
      bundle,
      broker: broker.url,
      model: `${model.namespace}/${model.name}`,
      workers,
      maxBatch: 32,
      ...(delay !== undefined ? { maxDelayMs: delay } : {}),
    });
    cleanups.push(() => server.stop());
    const device = await startDevice({
      broker: broker.url,
      model,
      digest: pipeline.bundle.digest,
      id: "dev-0",
      encoding,
    });
    cleanups.push(() => device.close());
    configs.push({
      name: label,
      server,
      device,
      ...(delay !== undefined ? { maxDelayMs: delay } : {}),
      samples: [],
      calls: [],
      serverMs: [],
      queueMs: [],
      payloadBytes: [],
      errors: new Map(),
    });
  }

  // The echo's payloads: frames of the same size as the device's, built the way OffloadClient does.
  const echoFrames = work.map((o, i) => {
    const { fields, body } = encodeTensor(o.features, o.dims, encoding);
    return Buffer.from(
      encodeFrame(
        {
          kind: "infer",
          id: `dev-0-0123abcd-${i + 1}`,
          model: `bench/rtt1`,
          digest: pipeline.bundle.digest,
          stage: next.index,
          replyTo: "ddnn/bench/rtt1/reply/dev-0",
          deadline: Date.now(),
          sentAt: Date.now(),
          ...fields,
        },
        body,
      ),
    );
  });
  const echoClient = plainClient(broker.url, `bench-echo-client-${process.pid}`);
  cleanups.push(() => echoClient.endAsync());
  await connected(echoClient);
  await echoClient.subscribeAsync(echoOut, { qos: 1 });
  let echoWaiting: (() => void) | undefined;
  echoClient.on("message", (topic) => {
    if (topic === echoOut) echoWaiting?.();
  });
  const echoOnce = (payload: Buffer): Promise<number> =>
    new Promise<number>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("echo lost a message")), 5_000);
      const started = performance.now();
      echoWaiting = () => {
        clearTimeout(t);
        echoWaiting = undefined;
        resolve(performance.now() - started);
      };
      echoClient.publish(echoIn, payload, { qos: 1 });
    });

  let cursor = 0;
  const one = async (c: Config, record: boolean): Promise<void> => {
    const i = cursor++ % work.length;
    if (!c.device) {
      const ms = await echoOnce(echoFrames[i]!);
      if (record) {
        c.samples.push(ms);
        c.calls.push(ms);
        c.payloadBytes.push(echoFrames[i]!.length);
      }
      return;
    }
    const o = work[i]!;
    const started = performance.now();
    try {
      const reply = await c.device.offload.offload(next, o.features, o.dims, Date.now() + 5_000);
      const ms = performance.now() - started;
      if (record) {
        c.samples.push(reply.roundTripMs);
        c.calls.push(ms);
        c.serverMs.push(reply.header.timings.server ?? Number.NaN);
        c.queueMs.push(reply.header.timings.serverQueue ?? Number.NaN);
        c.payloadBytes.push(reply.bytesSent);
      }
    } catch (err) {
      const key = (err as { upstreamCode?: string; reason?: string }).upstreamCode ?? "error";
      c.errors.set(key, (c.errors.get(key) ?? 0) + 1);
    }
  };

  for (const c of configs)
    for (let i = 0; i < warmup && Date.now() < deadlineAt; i++) await one(c, false);
  let roundsDone = 0;
  for (let r = 0; r < rounds && Date.now() < deadlineAt; r++) {
    // Rotate the order each round so no configuration always runs first.
    const order = configs.map((_, j) => configs[(j + r) % configs.length]!);
    for (const c of order)
      for (let i = 0; i < requests && Date.now() < deadlineAt; i++) await one(c, true);
    roundsDone++;
  }

  const stats = configs.map((c) => ({
    c,
    s: summarize(c.samples),
    call: summarize(c.calls),
    server: summarize(c.serverMs),
    queue: summarize(c.queueMs),
    bytes: c.payloadBytes.reduce((a, b) => a + b, 0) / Math.max(1, c.payloadBytes.length),
  }));
  const echo = stats[0]!.s;
  const zero = stats[1]!;
  const dflt = stats[2]!;
  const fmt = (x: number) => (Number.isFinite(x) ? x.toFixed(3) : "-");
  console.log(
    `offload round trip through Mosquitto on loopback (one request in flight, closed loop); bundle ${manifest.name} ${manifest.version}; ` +
      `features [${work[0]!.dims.join(", ")}] as ${encoding.dtype}+${encoding.compression}; server: own process, ${workers} workers, maxBatch 32; ` +
      `${roundsDone} interleaved rounds of ${requests} requests per row after ${warmup} warm-up requests`,
  );
  console.log("");
  console.log(
    renderTable(
      [
        "path",
        "n",
        "payload B",
        "p50 ms",
        "p99 ms",
        "mean ms",
        "max ms",
        "p50 / echo",
        "p99 / echo",
        "call p50",
        "call p99",
        "server compute p50",
        "server queue p50",
        "errors",
      ],
      stats.map(({ c, s, call, server, queue, bytes }) => [
        c.name,
        String(s.n),
        bytes.toFixed(0),
        fmt(s.p50),
        fmt(s.p99),
        fmt(s.mean),
        fmt(s.max),
        ratio(s.p50 / echo.p50),
        ratio(s.p99 / echo.p99),
        fmt(call.p50),
        fmt(call.p99),
        fmt(server.p50),
        fmt(queue.p50),
        String([...c.errors.values()].reduce((a, b) => a + b, 0)),
      ]),
    ),
  );
  console.log("");
  console.log(
    "p50/p99/mean/max: publish to reply, as OffloadClient measures it (roundTripMs), and publish to receipt for the echo: the same start and end points and the same payload bytes. " +
      "call: from the offload() call, features encoding included (the echo sends prebuilt bytes: call = round trip). server compute/queue: the reply's timings.server and timings.serverQueue, ms",
  );
  const errors = stats.reduce(
    (n, { c }) => n + [...c.errors.values()].reduce((a, b) => a + b, 0),
    0,
  );
  const overhead = zero.s.p50 / echo.p50;
  const code = printGoals([
    {
      name: "offload p50 at most 1.5x the bare echo p50 (server --max-delay-ms 0)",
      met: overhead <= 1.5 && errors === 0 && zero.s.n > 0,
      detail: `${ratio(overhead)}: ${fmt(zero.s.p50)} ms against ${fmt(echo.p50)} ms${errors ? `; ${errors} requests failed` : ""}`,
    },
  ]);
  const summary = (s: Summary) => ({
    n: s.n,
    p50Ms: round(s.p50),
    p99Ms: round(s.p99),
    meanMs: round(s.mean),
    maxMs: round(s.max),
  });
  console.log(
    JSON.stringify({
      bench: "offload-rtt",
      bundle: `${manifest.name}@${manifest.version}`,
      encoding: `${encoding.dtype}+${encoding.compression}`,
      payloadBytes: Math.round(zero.bytes),
      rounds: roundsDone,
      requestsPerRound: requests,
      echo: summary(echo),
      offloadMaxDelay0: {
        ...summary(zero.s),
        callP50Ms: round(zero.call.p50),
        callP99Ms: round(zero.call.p99),
      },
      offloadDefaultMaxDelay: {
        maxDelayMs: defaultDelay,
        ...summary(dflt.s),
        callP50Ms: round(dflt.call.p50),
        callP99Ms: round(dflt.call.p99),
      },
      ratioP50: round(overhead, 3),
      ratioP99: round(zero.s.p99 / echo.p99, 3),
      ratioP50DefaultDelay: round(dflt.s.p50 / echo.p50, 3),
      ratioP99DefaultDelay: round(dflt.s.p99 / echo.p99, 3),
      errors,
      goalMet: code === 0,
    }),
  );
  process.exitCode = code;
} finally {
  await cleanup();
}
