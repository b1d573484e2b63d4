/**
 * Server throughput with micro-batching against maxBatch=1, and the event-loop delay of the
 * server's MQTT thread under that load.
 *
 * Load: 16 simulated devices, closed loop (each keeps exactly one request in flight and sends the
 * next as soon as its answer arrives), each with its own MQTT connection (the agent's settings:
 * TCP_NODELAY, MQTT 3.1.1, QoS 1), sending the device-stage features of the evaluation sample
 * through a real Mosquitto on loopback. Bodies are encoded once beforehand with the agent's
 * encoding (default u8q+deflate), so the load generator's CPU stays small on a machine it shares
 * with the server (--offload-client uses the agent's OffloadClient, which encodes every request).
 *
 * The server is `ddnn server` in its own process (two workers), as in production: the load
 * generator's work does not run on its event loop, and the OS schedules them as separate programs.
 * Its main thread, which runs the MQTT client, carries an event-loop-delay probe
 * (perf_hooks.monitorEventLoopDelay, preloaded with --import); an idle canary process with the
 * same probe shows what the machine's scheduler alone costs an event loop under the same load.
 *
 * Three servers run side by side under different model names: maxBatch 32 with the default
 * max delay (the shipped configuration), maxBatch 32 with maxDelayMs 2 (the DDNNModel default),
 * and maxBatch 1. Windows
 * rotate through them forwards then backwards (ABCCBA), so drift in the machine's load hits all
 * alike. Each window: warm-up, then the measured part.
 *
 *   node dist/bench/throughput.js [--bundle DIR] [--devices 16] [--workers 2] [--rounds 2]
 *                                 [--initial-warmup-s 4] [--warmup-s 2] [--window-s 6]
 *                                 [--offload-client]
 *
 * Goals (bench/README.md explains their floors), for the shipped configuration (maxBatch 32,
 * default maxDelayMs): 3. its CPU per answer (all threads, /proc) at most 2.5x the pure
 * session.run CPU per sample at its mean batch size, measured in this process between the
 * windows; 4. its event-loop delay p99 under 5 ms in every measured window.
 */
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { renderTable } from "../cli/table.js";
import { type Summary, summarize } from "../core/stats.js";
import { parseModelRef } from "../core/topics.js";
import type { Compression, WireDtype } from "../core/wire/frame.js";
import { encodeTensor } from "../core/wire/tensor.js";
import { gatewaySchema } from "../gateway/config.js";
import { serverSchema } from "../server/config.js";
import { cpuSeconds, startDevice } from "./support/devices.js";
import type { EldReading } from "./support/eld-probe.js";
import { type EncodedRequest, startFrameDevice } from "./support/frame-device.js";
import { startMosquitto } from "./support/mosquitto.js";
import { printGoals, ratio, round } from "./support/report.js";
import { lastStageOf, loadSample, tierUnderTest } from "./support/sample.js";
import {
  metricSum,
  type ServerProcess,
  startCanary,
  startLeanServer,
  startMeasuredTier,
} from "./support/server-process.js";
import {
  cpuUsPerSampleAt,
  fitCost,
  type RunCost,
  type SessionCost,
  sessionCostMeter,
} from "./support/session-cost.js";

const { values } = parseArgs({
  options: {
    bundle: { type: "string" },
    devices: { type: "string", default: "16" },
    /** Default: 2 for the server, the gateway's own default for --tier gateway. */
    workers: { type: "string" },
    tier: { type: "string", default: "server" },
    rounds: { type: "string", default: "2" },
    "warmup-s": { type: "string", default: "2" },
    "initial-warmup-s": { type: "string", default: "4" },
    "window-s": { type: "string", default: "6" },
    /** Default: 32 for the server, the gateway's own default for --tier gateway. */
    "max-batch": { type: "string" },
    dtype: { type: "string", default: "u8q" },
    compression: { type: "string", default: "deflate" },
    "offload-client": { type: "boolean", default: false },
    /** Leave out the lean reference server. */
    "no-lean": { type: "boolean", default: false },
    /** Safety bound on requests per device per window. */
    "max-requests": { type: "string", default: "100000" },
  },
});
const deviceCount = Number(values.devices);
const { gatewayMode, bundle } = tierUnderTest(values.tier, values.bundle);
const tierSchema = gatewayMode ? gatewaySchema : serverSchema;
const workers = Number(
  values.workers ?? (gatewayMode ? tierSchema.shape.workers.parse(undefined) : 2),
);
const rounds = Number(values.rounds);
const warmupMs = Number(values["warmup-s"]) * 1000;
const initialWarmupMs = Number(values["initial-warmup-s"]) * 1000;
const windowMs = Number(values["window-s"]) * 1000;
const maxBatch = Number(
  values["max-batch"] ?? (gatewayMode ? tierSchema.shape.maxBatch.parse(undefined) : 32),
);
const maxRequests = Number(values["max-requests"]);
const useOffloadClient = values["offload-client"];
const encoding = {
  dtype: values.dtype as WireDtype,
  compression: values.compression as Compression,
};
const defaultDelay = tierSchema.shape.maxDelayMs.parse(undefined);
const timeoutMs = 10_000;

const sample = await loadSample({ bundle, only: [0] });
const { pipeline } = sample;
const manifest = pipeline.manifest;
const work = sample.offloaded;
if (work.length === 0) throw new Error("the device exit answered every sample: nothing to offload");
const next = { index: 1, name: manifest.stages[1]!.name };
const lastStage = lastStageOf(pipeline, gatewayMode);
const digest = pipeline.bundle.digest;
const encoded: EncodedRequest[] = work.map((o) => encodeTensor(o.features, o.dims, encoding));
const meanBytes = encoded.reduce((n, e) => n + e.body.length, 0) / encoded.length;
await pipeline.release();

/** One request from a device; resolves with an error code, or undefined when answered ok. */
type Send = (i: number) => Promise<string | undefined>;

interface Config {
  readonly key: string;
  readonly name: string;
  readonly maxBatch: number;
  readonly maxDelayMs: number;
  readonly server: ServerProcess;
  readonly devices: Send[];
  ok: number;
  windowMs: number;
  readonly latencies: number[];
  readonly errors: Map<string, number>;
  batches: number;
  batchSamples: number;
  readonly cpu: { server: number; loadgen: number; broker: number };
  readonly eld: EldReading[];
  readonly canary: EldReading[];
}

interface Window {
  config: string;
  window: number;
  ok: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  meanBatch: number;
  eldP99Ms: number;
  canaryP99Ms: number;
}

const broker = await startMosquitto();
const cleanups: (() => Promise<unknown>)[] = [() => broker.stop()];
try {
  const canary = await startCanary();
  cleanups.push(() => canary.stop());
  const configs: Config[] = [];
  const variants: [string, string, number, number | undefined][] = [
    ["A", `maxBatch ${maxBatch}, maxDelayMs ${defaultDelay} (default)`, maxBatch, undefined],
    ["A2", `maxBatch ${maxBatch}, maxDelayMs 2 (DDNNModel default)`, maxBatch, 2],
    ["B", "maxBatch 1", 1, undefined],
  ];
  // The reference for goal 3 (a server without any framework), where the stage under test is
  // the last one: what this protocol costs on mqtt.js on this machine.
  if (!gatewayMode && !values["no-lean"] && manifest.stages.length === 2)
    variants.push(["L", `reference: lean mqtt.js server, maxBatch ${maxBatch}`, maxBatch, 0]);
  for (const [key, name, mb, delay] of variants) {
    const model = parseModelRef(`bench/tput${key.toLowerCase()}`);
    const modelArg = `${model.namespace}/${model.name}`;
    let server: ServerProcess;
    if (key === "L") {
      server = await startLeanServer({ bundle, broker: broker.url, model: modelArg, maxBatch: mb });
      cleanups.push(() => server.stop());
    } else {
      // With --tier gateway the gateway is measured; the server behind it answers what it forwards.
      const tier = await startMeasuredTier(
        {
          bundle,
          broker: broker.url,
          model: modelArg,
          workers,
          maxBatch: mb,
          ...(delay !== undefined ? { maxDelayMs: delay } : {}),
        },
        gatewayMode ? { lastStage } : undefined,
      );
      cleanups.push(() => tier.stop());
      server = tier.measured;
    }
    const devices: Send[] = [];
    for (let d = 0; d < deviceCount; d++) {
      const id = `dev-${d}`;
      if (useOffloadClient) {
        const device = await startDevice({ broker: broker.url, model, digest, id, encoding });
        cleanups.push(() => device.close());
        devices.push((i) => {
          const o = work[i % work.length]!;
          return device.offload.offload(next, o.features, o.dims, Date.now() + timeoutMs).then(
            () => undefined,
            (err: { upstreamCode?: string; reason?: string }) =>
              err.upstreamCode ?? err.reason ?? "error",
          );
        });
      } else {
        const device = await startFrameDevice({
          broker: broker.url,
          model,
          digest,
          stage: next,
          id,
        });
        cleanups.push(() => device.close());
        devices.push((i) =>
          device
            .request(encoded[i % encoded.length]!, timeoutMs)
            .then((a) => (a.ok ? undefined : (a.code ?? "error"))),
        );
      }
    }
    configs.push({
      key,
      name,
      maxBatch: mb,
      maxDelayMs: delay ?? defaultDelay,
      server,
      devices,
      ok: 0,
      windowMs: 0,
      latencies: [],
      errors: new Map(),
      batches: 0,
      batchSamples: 0,
      cpu: { server: 0, loadgen: 0, broker: 0 },
      eld: [],
      canary: [],
    });
  }

  const windows: Window[] = [];
  let cursor = 0;
  const cpuNow = async (c: Config) => ({
    server: await cpuSeconds(c.server.pid),
    loadgen: await cpuSeconds(process.pid),
    broker: await cpuSeconds(broker.pid),
  });
  const runWindow = async (c: Config, n: number) => {
    const windowStart = performance.now() + warmupMs;
    const windowEnd = windowStart + windowMs;
    let okInWindow = 0;
    const lat: number[] = [];
    let measuring = false;
    const loops = c.devices.map(async (send) => {
      for (let i = 0; i < maxRequests && performance.now() < windowEnd; i++) {
        const sent = performance.now();
        const inWindow = measuring;
        const error = await send(cursor++);
        const done = performance.now();
        if (!inWindow || done > windowEnd) continue;
        if (error === undefined) {
          okInWindow++;
          lat.push(done - sent);
        } else c.errors.set(error, (c.errors.get(error) ?? 0) + 1);
      }
    });
    await new Promise((r) => setTimeout(r, warmupMs));
    const cpuBefore = await cpuNow(c);
    const metricsBefore = await c.server.metrics();
    await Promise.all([c.server.eld("start"), canary.eld("start")]);
    measuring = true;
    const opened = performance.now();
    await new Promise((r) => setTimeout(r, Math.max(0, windowEnd - performance.now())));
    measuring = false;
    const elapsed = performance.now() - opened;
    await Promise.all([c.server.eld("stop"), canary.eld("stop")]);
    const cpuAfter = await cpuNow(c);
    const metricsAfter = await c.server.metrics();
    const [eld, idle] = await Promise.all([c.server.readEld(), canary.readEld()]);
    await Promise.all(loops);
    const batches =
      metricSum(metricsAfter, "ddnn_batch_size_count") -
      metricSum(metricsBefore, "ddnn_batch_size_count");
    const batchSamples =
      metricSum(metricsAfter, "ddnn_batch_size_sum") -
      metricSum(metricsBefore, "ddnn_batch_size_sum");
    c.ok += okInWindow;
    c.windowMs += elapsed;
    c.latencies.push(...lat);
    c.batches += batches;
    c.batchSamples += batchSamples;
    c.cpu.server += cpuAfter.server - cpuBefore.server;
    c.cpu.loadgen += cpuAfter.loadgen - cpuBefore.loadgen;
    c.cpu.broker += cpuAfter.broker - cpuBefore.broker;
    c.eld.push(eld);
    c.canary.push(idle);
    const s = summarize(lat);
    windows.push({
      config: c.name,
      window: n,
      ok: okInWindow,
      perSecond: okInWindow / (elapsed / 1000),
      p50Ms: s.p50,
      p99Ms: s.p99,
      meanBatch: batches ? batchSamples / batches : Number.NaN,
      eldP99Ms: eld.p99Ms,
      canaryP99Ms: idle.p99Ms,
    });
  };

  // Before any window: load each fresh server for a while (JIT, first connections, allocations),
  // so the windows measure servers in their steady state, as a long-running server is.
  for (const c of configs) {
    const until = performance.now() + initialWarmupMs;
    await Promise.all(
      c.devices.map(async (send) => {
        for (let i = 0; i < maxRequests && performance.now() < until; i++) await send(cursor++);
      }),
    );
  }
  // The floor of goal 3: session.run of the server's stage alone in this process, at every batch
  // size the servers can form, measured between the windows (no load) before and after each round.
  const meter = await sessionCostMeter(
    pipeline.bundle,
    next.index,
    work.slice(0, 256).map((o) => o.features),
  );
  cleanups.push(() => meter.release());
  const batchSizes = [1, 2, 4, 8, 16, 32].filter((k) => k <= maxBatch);
  const passes: SessionCost[] = [await meter.measure(batchSizes)];
  let n = 0;
  for (let r = 0; r < rounds; r++) {
    for (const c of [...configs, ...[...configs].reverse()]) await runWindow(c, ++n);
    passes.push(await meter.measure(batchSizes));
  }
  const medianOf = (xs: number[]) => summarize(xs).p50;
  const runCosts: RunCost[] = batchSizes.map((k, i) => ({
    batch: k,
    cpuUsPerCall: medianOf(passes.map((p) => p.backToBack[i]!.cpuUsPerCall)),
    wallUsP50: medianOf(passes.map((p) => p.backToBack[i]!.wallUsP50)),
    calls: passes.reduce((t, p) => t + p.backToBack[i]!.calls, 0),
  }));
  const idleRun = {
    cpuUs: medianOf(passes.map((p) => p.idle.cpuUsPerCall)),
    wallUs: medianOf(passes.map((p) => p.idle.wallUsP50)),
  };
  const fit = fitCost(runCosts);

  const fmt = (x: number, d = 3) => (Number.isFinite(x) ? x.toFixed(d) : "-");
  const tput = (c: Config) => c.ok / (c.windowMs / 1000);
  const worst = (xs: EldReading[]) => ({
    p99Ms: Math.max(...xs.map((e) => e.p99Ms)),
    maxMs: Math.max(...xs.map((e) => e.maxMs)),
    samples: xs.reduce((k, e) => k + e.count, 0),
  });
  const median = (xs: number[]) => {
    const s = [...xs].sort((p, q) => p - q);
    const m = s.length >> 1;
    return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
  };
  const lat = configs.map((c) => summarize(c.latencies));
  const [a, a2, b] = [configs[0]!, configs[1]!, configs[2]!];
  const lean = configs.find((c) => c.key === "L");
  const sum = (m: Map<string, number>) => [...m.values()].reduce((x, y) => x + y, 0);

  console.log(
    `${gatewayMode ? `gateway (stage ${next.name}; a ddnn server behind it, 2 workers, maxBatch 32, answers what it forwards)` : "server"} throughput through Mosquitto on loopback: bundle ${manifest.name} ${manifest.version}; ${deviceCount} devices, closed loop (one request in flight each), ` +
      `${useOffloadClient ? "OffloadClient (encodes every request)" : "pre-encoded bodies"}, ${encoding.dtype}+${encoding.compression} features [${work[0]!.dims.join(", ")}] (${meanBytes.toFixed(0)} B body); ` +
      `ddnn ${values.tier} in its own process, ${workers} workers; ${rounds * 2} measured windows of ${windowMs / 1000} s per configuration (ABCCBA order, ${warmupMs / 1000} s warm-up each, after ${initialWarmupMs / 1000} s of load on each fresh server)`,
  );
  console.log("");
  console.log(
    renderTable(
      [
        "configuration",
        "window",
        "answers",
        "answers/s",
        "p50 ms",
        "p99 ms",
        "mean batch",
        "loop delay p99 ms",
        "idle canary p99 ms",
      ],
      windows.map((w) => [
        w.config,
        String(w.window),
        String(w.ok),
        fmt(w.perSecond, 0),
        fmt(w.p50Ms),
        fmt(w.p99Ms),
        fmt(w.meanBatch, 2),
        fmt(w.eldP99Ms),
        fmt(w.canaryP99Ms),
      ]),
    ),
  );
  console.log("");
  console.log(
    renderTable(
      [
        "configuration",
        "answers/s",
        "vs maxBatch 1",
        "p50 ms",
        "p99 ms",
        "max ms",
        "mean batch",
        "errors",
        "CPU ms/answer: server",
        "load gen",
        "mosquitto",
        "loop delay p99 (worst window)",
        "max",
        "idle canary p99 (worst)",
      ],
      configs.map((c, i) => [
        c.name,
        fmt(tput(c), 0),
        ratio(tput(c) / tput(b)),
        fmt(lat[i]!.p50),
        fmt(lat[i]!.p99),
        fmt(lat[i]!.max),
        fmt(c.batches ? c.batchSamples / c.batches : Number.NaN, 2),
        String(sum(c.errors)),
        fmt((c.cpu.server * 1000) / c.ok),
        fmt((c.cpu.loadgen * 1000) / c.ok),
        fmt((c.cpu.broker * 1000) / c.ok),
        fmt(worst(c.eld).p99Ms),
        fmt(worst(c.eld).maxMs),
        fmt(worst(c.canary).p99Ms),
      ]),
    ),
  );
  console.log("");
  console.log(
    "answers/s: ok answers in the measured windows / their length; latency: request sent to answer received; mean batch: the server's ddnn_batch_size histogram over the windows; " +
      "CPU ms/answer: user+system CPU of each process over the windows (/proc), per answer (the server's includes its worker threads); " +
      `loop delay: lateness of a ${a.eld[0]?.resolutionMs ?? "-"} ms monitorEventLoopDelay timer on the server's main (MQTT) thread, per window; idle canary: the same probe in an idle Node process during the same windows`,
  );
  const serverCpu = (c: Config) => (c.cpu.server * 1000) / c.ok;
  const totalCpu = (c: Config) => ((c.cpu.server + c.cpu.loadgen + c.cpu.broker) * 1000) / c.ok;
  console.log(
    `CPU per answer, maxBatch 1 / ${a.name}: server process ${ratio(serverCpu(b) / serverCpu(a))}, ` +
      `server + load generator + Mosquitto ${ratio(totalCpu(b) / totalCpu(a))} (when the machine's CPU is the limit, the throughput gain cannot exceed the second figure)`,
  );
  const errors = configs.reduce((k, c) => k + sum(c.errors), 0);
  const speedup = tput(a) / tput(b);
  const eldWorst = worst(a.eld).p99Ms;
  const meanBatch = (c: Config) => (c.batches ? c.batchSamples / c.batches : Number.NaN);
  /** Pure session.run CPU per sample at this server's mean batch size, microseconds. */
  const floorUs = (c: Config) => cpuUsPerSampleAt(runCosts, meanBatch(c));
  const overFloor = (c: Config) => (serverCpu(c) * 1000) / floorUs(c);
  console.log("");
  console.log(
    renderTable(
      [
        "session.run alone, batch",
        "CPU us per call",
        "CPU us per sample",
        "wall us per call (p50)",
      ],
      runCosts.map((k) => [
        String(k.batch),
        fmt(k.cpuUsPerCall, 1),
        fmt(k.cpuUsPerCall / k.batch, 1),
        fmt(k.wallUsP50, 1),
      ]),
    ),
  );
  console.log(
    `session.run of stage ${next.name} alone in this process (one intra-op thread, as the workers open it), back-to-back, median of ${passes.length} passes between the windows: ` +
      `CPU per call ~ ${fmt(fit.perCallUs, 1)} us + ${fmt(fit.perSampleUs, 1)} us per sample (least squares); batch 1 after 1 ms idle: ${fmt(idleRun.cpuUs, 1)} us CPU, ${fmt(idleRun.wallUs, 1)} us wall`,
  );
  console.log(
    `server CPU per answer over pure session.run CPU per sample at the server's mean batch size: ${configs
      .map(
        (c) =>
          `${c.name} ${ratio(overFloor(c))} (${fmt(serverCpu(c) * 1000, 0)} us against ${fmt(floorUs(c), 1)} us at batch ${fmt(meanBatch(c), 2)})`,
      )
      .join("; ")}`,
  );
  const code = printGoals([
    {
      name: `${gatewayMode ? "5 (gateway): gateway" : "3: server"} CPU per answer (all threads, ${a.name}) at most 2.5x pure session.run CPU per sample at its mean batch size`,
      met: overFloor(a) <= 2.5 && errors === 0,
      detail: `${ratio(overFloor(a))}: ${fmt(serverCpu(a) * 1000, 0)} us against ${fmt(floorUs(a), 1)} us at mean batch ${fmt(meanBatch(a), 2)}; ${fmt(tput(a), 0)} answers/s (${ratio(speedup)} maxBatch 1)${lean ? `; the lean reference ${ratio(overFloor(lean))} (${fmt(serverCpu(lean) * 1000, 0)} us at mean batch ${fmt(meanBatch(lean), 2)})` : ""}${errors ? `; ${errors} requests failed` : ""}`,
    },
    {
      name: `${gatewayMode ? "5 (gateway)" : "4"}: event-loop delay p99 of the ${gatewayMode ? "gateway" : "server"}'s MQTT thread under this load under 5 ms`,
      met: eldWorst < 5,
      detail: `worst of ${a.eld.length} windows ${fmt(eldWorst)} ms (median window ${fmt(median(a.eld.map((e) => e.p99Ms)))} ms), idle canary worst ${fmt(worst(a.canary).p99Ms)} ms`,
    },
  ]);
  const summary = (s: Summary) => ({
    n: s.n,
    p50Ms: round(s.p50),
    p99Ms: round(s.p99),
    maxMs: round(s.max),
  });
  console.log(
    JSON.stringify({
      bench: "throughput",
      tier: values.tier,
      bundle: `${manifest.name}@${manifest.version}`,
      devices: deviceCount,
      load: "closed loop, one request in flight per device",
      loadGenerator: useOffloadClient ? "OffloadClient" : "pre-encoded frames",
      workers,
      windowsPerConfig: rounds * 2,
      windowS: windowMs / 1000,
      configs: configs.map((c, i) => ({
        name: c.name,
        maxBatch: c.maxBatch,
        maxDelayMs: c.maxDelayMs,
        answersPerS: round(tput(c), 1),
        vsMaxBatch1: round(tput(c) / tput(b), 3),
        latency: summary(lat[i]!),
        meanBatch: round(c.batches ? c.batchSamples / c.batches : Number.NaN, 2),
        errors: Object.fromEntries(c.errors),
        cpuMsPerAnswer: {
          server: round((c.cpu.server * 1000) / c.ok),
          loadgen: round((c.cpu.loadgen * 1000) / c.ok),
          broker: round((c.cpu.broker * 1000) / c.ok),
        },
        eventLoopDelay: {
          resolutionMs: c.eld[0]?.resolutionMs ?? null,
          p99MsPerWindow: c.eld.map((e) => round(e.p99Ms)),
          p99MsWorst: round(worst(c.eld).p99Ms),
          maxMs: round(worst(c.eld).maxMs),
          canaryP99MsPerWindow: c.canary.map((e) => round(e.p99Ms)),
        },
      })),
      sessionRun: {
        backToBack: runCosts.map((k) => ({
          batch: k.batch,
          cpuUsPerCall: round(k.cpuUsPerCall, 1),
          wallUsP50: round(k.wallUsP50, 1),
        })),
        fit: { perCallUs: round(fit.perCallUs, 1), perSampleUs: round(fit.perSampleUs, 1) },
        batch1AfterIdle1Ms: { cpuUs: round(idleRun.cpuUs, 1), wallUs: round(idleRun.wallUs, 1) },
      },
      serverCpuOverSessionRun: round(overFloor(a), 3),
      serverCpuOverSessionRunPerConfig: configs.map((c) => round(overFloor(c), 3)),
      speedup: round(speedup, 3),
      serverCpuPerAnswerRatio: round(serverCpu(b) / serverCpu(a), 3),
      totalCpuPerAnswerRatio: round(totalCpu(b) / totalCpu(a), 3),
      speedupMaxDelay2: round(tput(a2) / tput(b), 3),
      eventLoopDelayP99MsWorst: round(eldWorst),
      goalMet: code === 0,
    }),
  );
  process.exitCode = code;
} finally {
  for (const c of cleanups.reverse()) await c().catch(() => {});
}
