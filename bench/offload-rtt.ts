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
 * Also measured: the protocol floor (the server's request path without the worker pool and the
 * inference, bench/support/floor-server.ts) and the server with --max-delay-ms 2, the DDNNModel
 * default. The latency goal is measured with the server's default max delay (0: a lone request
 * is dispatched at once). Goal: p50(offload) / p50(echo) <= 1.5.
 */
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { renderTable } from "../cli/table.js";
import { type Summary, summarize } from "../core/stats.js";
import { type ModelRef, parseModelRef } from "../core/topics.js";
import { type Compression, encodeFrame, type WireDtype } from "../core/wire/frame.js";
import { encodeTensor } from "../core/wire/tensor.js";
import { serverSchema } from "../server/config.js";
import { type Device, startDevice } from "./support/devices.js";
import { startHelper } from "./support/helper-process.js";
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
  // Every path under its own model name on the same broker, so rounds can interleave.
  const configs: Config[] = [];
  const echoIn = "bench/echo/req";
  const echoOut = `bench/echo/reply/${process.pid}`;
  const echoChild = await startHelper("echo.js", [
    "--broker",
    broker.url,
    "--in",
    echoIn,
    "--out",
    echoOut,
  ]);
  cleanups.push(() => echoChild.stop());
  const fresh = () => ({
    samples: [],
    calls: [],
    serverMs: [],
    queueMs: [],
    payloadBytes: [],
    errors: new Map<string, number>(),
  });
  configs.push({ name: "bare MQTT echo", ...fresh() });
  const deviceFor = async (model: ModelRef) => {
    const device = await startDevice({
      broker: broker.url,
      model,
      digest: pipeline.bundle.digest,
      id: "dev-0",
      encoding,
    });
    cleanups.push(() => device.close());
    return device;
  };
  // The protocol floor: the server's request path without the worker pool and the inference.
  const floorModel = parseModelRef("bench/rttf");
  const floor = await startHelper("floor-server.js", [
    "--broker",
    broker.url,
    "--bundle",
    bundle,
    "--model",
    `${floorModel.namespace}/${floorModel.name}`,
    "--stage",
    String(next.index),
    "--shape",
    work[0]!.dims.slice(1).join(","),
  ]);
  cleanups.push(() => floor.stop());
  configs.push({
    name: "protocol floor: no inference",
    device: await deviceFor(floorModel),
    ...fresh(),
  });
  for (const [label, delay] of [
    [`offload, ddnn server (--max-delay-ms ${defaultDelay})`, defaultDelay],
    ["offload, ddnn server --max-delay-ms 2", 2],
  ] as const) {
    const model = parseModelRef(`bench/rtt${configs.length}`);
    const server = await startServerProcess({
      bundle,
      broker: broker.url,
      model: `${model.namespace}/${model.name}`,
      workers,
      maxBatch: 32,
      maxDelayMs: delay,
    });
    cleanups.push(() => server.stop());
    configs.push({
      name: label,
      server,
      device: await deviceFor(model),
      maxDelayMs: delay,
      ...fresh(),
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
  const floorStats = stats[1]!;
  const zero = stats[2]!;
  const delay2 = stats[3]!;
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
  const floorRatio = floorStats.s.p50 / echo.p50;
  console.log(
    `protocol floor: a server that decodes, validates and answers every request without inference takes ${ratio(floorRatio)} the echo's p50 ` +
      `(${fmt(floorStats.s.p50)} ms); the rest of the server's ${ratio(overhead)} is the worker pool and the inference (server compute p50 ${fmt(zero.server.p50)} ms)`,
  );
  const code = printGoals([
    {
      name: `offload p50 at most 1.5x the bare echo p50 (server --max-delay-ms ${defaultDelay})`,
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
      protocolFloor: summary(floorStats.s),
      offload: {
        maxDelayMs: defaultDelay,
        ...summary(zero.s),
        callP50Ms: round(zero.call.p50),
        callP99Ms: round(zero.call.p99),
      },
      offloadMaxDelay2: {
        maxDelayMs: 2,
        ...summary(delay2.s),
        callP50Ms: round(delay2.call.p50),
        callP99Ms: round(delay2.call.p99),
      },
      ratioP50: round(overhead, 3),
      ratioP99: round(zero.s.p99 / echo.p99, 3),
      ratioP50Floor: round(floorRatio, 3),
      ratioP50MaxDelay2: round(delay2.s.p50 / echo.p50, 3),
      ratioP99MaxDelay2: round(delay2.s.p99 / echo.p99, 3),
      errors,
      goalMet: code === 0,
    }),
  );
  process.exitCode = code;
} finally {
  await cleanup();
}
