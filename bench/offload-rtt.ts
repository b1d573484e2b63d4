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
 * inference, bench/support/floor-server.ts), the server with --max-delay-ms 2 (the DDNNModel
 * default), and session.run of the server stage alone in this process (batch 1, back-to-back and
 * after 1 ms idle). Every row encodes each request as the device does (the echo too).
 *
 * Goals (bench/README.md explains their floors), on call p50 (from the offload() call, encoding
 * included, to the answer):
 *   1. offload - echo <= 2.0 x the server's compute p50 (from the replies' timings), server with
 *      its default max delay (0: a lone request is dispatched at once);
 *   2. protocol floor <= 1.3 x echo.
 */
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { renderTable } from "../cli/table.js";
import { type Summary, summarize } from "../core/stats.js";
import { type ModelRef, parseModelRef } from "../core/topics.js";
import { upstreamCompute } from "../device-agent/agent.js";
import { gatewaySchema } from "../gateway/config.js";
import { serverSchema } from "../server/config.js";
import { type Device, startDevice } from "./support/devices.js";
import { type EchoClient, startEcho } from "./support/echo-client.js";
import { startHelper } from "./support/helper-process.js";
import { startMosquitto } from "./support/mosquitto.js";
import { printGoals, ratio, round } from "./support/report.js";
import { roundOptions, roundSettings } from "./support/rounds.js";
import { lastStageOf, loadSample, tierUnderTest } from "./support/sample.js";
import { type ServerProcess, startMeasuredTier } from "./support/server-process.js";
import { sessionCostMeter } from "./support/session-cost.js";

const { values } = parseArgs({
  options: {
    ...roundOptions(1000, 5),
    workers: { type: "string", default: "2" },
    tier: { type: "string", default: "server" },
  },
});
const { requests, rounds, warmup, encoding, deadlineAt } = roundSettings(values);
const workers = Number(values.workers);
const { gatewayMode, bundle } = tierUnderTest(values.tier, values.bundle);
const defaultDelay = (gatewayMode ? gatewaySchema : serverSchema).shape.maxDelayMs.parse(undefined);

const sample = await loadSample({ bundle, only: [0] });
const { pipeline } = sample;
const manifest = pipeline.manifest;
const work = sample.offloaded.slice(0, 512);
if (work.length === 0) throw new Error("the device exit answered every sample: nothing to offload");
const next = { index: 1, name: manifest.stages[1]!.name };
const lastStage = lastStageOf(pipeline, gatewayMode);
await pipeline.release();

const broker = await startMosquitto();
const cleanups: (() => Promise<unknown>)[] = [() => broker.stop()];
const cleanup = async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
};

interface Config {
  readonly name: string;
  /** What the goals look it up by. */
  readonly role: "echo" | "relay" | "floor" | "offload" | "offload2" | "forwarded" | "forwarded2";
  /** Gateway rows: where the replies the server sent (forwarded by the gateway) are recorded. */
  readonly forwarded?: Config;
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
  const fresh = () => ({
    samples: [],
    calls: [],
    serverMs: [],
    queueMs: [],
    payloadBytes: [],
    errors: new Map<string, number>(),
  });
  configs.push({ name: "bare MQTT echo", role: "echo", ...fresh() });
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
    role: "floor",
    device: await deviceFor(floorModel),
    ...fresh(),
  });
  const tierName = gatewayMode ? "gateway" : "server";
  for (const [label, delay, role] of [
    [`offload, ddnn ${tierName} (--max-delay-ms ${defaultDelay})`, defaultDelay, "offload"],
    [`offload, ddnn ${tierName} --max-delay-ms 2`, 2, "offload2"],
  ] as const) {
    const model = parseModelRef(`bench/rtt${configs.length}`);
    // A gateway with its own pool defaults, and the server behind it for what it forwards.
    const tier = await startMeasuredTier(
      {
        bundle,
        broker: broker.url,
        model: `${model.namespace}/${model.name}`,
        maxDelayMs: delay,
        ...(gatewayMode ? {} : { workers, maxBatch: 32 }),
      },
      gatewayMode ? { lastStage } : undefined,
    );
    cleanups.push(() => tier.stop());
    const server = tier.measured;
    const device = await deviceFor(model);
    const forwarded: Config | undefined = gatewayMode
      ? {
          name: `${label}, forwarded to ddnn server`,
          role: role === "offload" ? "forwarded" : "forwarded2",
          device,
          ...fresh(),
        }
      : undefined;
    configs.push({
      name: gatewayMode ? `${label}, answered by its exit` : label,
      role,
      server,
      device,
      maxDelayMs: delay,
      ...(forwarded ? { forwarded } : {}),
      ...fresh(),
    });
  }

  // The echo's payloads are the device's own request frames, encoded at every call by the same
  // function OffloadClient uses (features -> u8q -> deflate -> header -> frame), so the echo
  // row pays the same device-side encoding as the floor and offload rows.
  const echoOf = async (name: string, relays: number) => {
    const client = await startEcho({
      broker: broker.url,
      name,
      relays,
      target: {
        model: parseModelRef("bench/rtt1"),
        digest: pipeline.bundle.digest,
        replyTo: "ddnn/bench/rtt1/reply/dev-0",
        encoding,
      },
      stage: next.index,
    });
    cleanups.push(() => client.close());
    return client;
  };
  const echoClient = await echoOf("echo", 1);
  // Gateway: what the gateway forwards crosses three hops (device, gateway, server, device);
  // its baseline is the echo relayed once more, by a second echo process.
  let relayClient: EchoClient | undefined;
  if (gatewayMode) {
    relayClient = await echoOf("relay", 2);
    configs.splice(1, 0, { name: "bare MQTT echo, relayed (3 hops)", role: "relay", ...fresh() });
  }

  let cursor = 0;
  const one = async (c: Config, record: boolean): Promise<void> => {
    const i = cursor++ % work.length;
    const o = work[i]!;
    if (!c.device) {
      const e = await (c.role === "relay" ? relayClient! : echoClient).once(o.features, o.dims);
      if (record) {
        c.samples.push(e.rttMs);
        c.calls.push(e.callMs);
        c.payloadBytes.push(e.bytes);
      }
      return;
    }
    const started = performance.now();
    try {
      const reply = await c.device.offload.offload(next, o.features, o.dims, Date.now() + 5_000);
      const ms = performance.now() - started;
      // A gateway's reply says which tier answered: its own exit, or the server after it.
      const row = c.forwarded && reply.header.tier !== "edge" ? c.forwarded : c;
      if (record) {
        const t = reply.header.timings;
        row.samples.push(reply.roundTripMs);
        row.calls.push(ms);
        // Every tier's compute on the way (the server's; a gateway's, and the server's after it).
        row.serverMs.push(upstreamCompute(t));
        row.queueMs.push((t.serverQueue ?? 0) + (t.edgeQueue ?? 0));
        row.payloadBytes.push(reply.bytesSent);
      }
    } catch (err) {
      const key = (err as { upstreamCode?: string; reason?: string }).upstreamCode ?? "error";
      c.errors.set(key, (c.errors.get(key) ?? 0) + 1);
    }
  };

  // A gateway row's forwarded replies get a row of their own, right after it.
  const rows = configs.flatMap((c) => (c.forwarded ? [c, c.forwarded] : [c]));
  for (const c of configs)
    for (let i = 0; i < warmup && Date.now() < deadlineAt; i++) await one(c, false);
  // The stage's own cost, the physical floor of the compute: session.run alone in this process,
  // batch 1, back-to-back and after 1 ms idle (the regime of one request at a time), before the
  // rounds and after them.
  const meter = await sessionCostMeter(
    pipeline.bundle,
    next.index,
    work.map((o) => o.features),
  );
  cleanups.push(() => meter.release());
  const costs = [await meter.measure([1])];
  let roundsDone = 0;
  for (let r = 0; r < rounds && Date.now() < deadlineAt; r++) {
    // Rotate the order each round so no configuration always runs first.
    const order = configs.map((_, j) => configs[(j + r) % configs.length]!);
    for (const c of order)
      for (let i = 0; i < requests && Date.now() < deadlineAt; i++) await one(c, true);
    roundsDone++;
  }
  costs.push(await meter.measure([1]));
  const medianOf = (xs: number[]) => summarize(xs).p50;
  const runBackToBack = {
    wallUs: medianOf(costs.map((k) => k.backToBack[0]!.wallUsP50)),
    cpuUs: medianOf(costs.map((k) => k.backToBack[0]!.cpuUsPerCall)),
  };
  const runIdle = {
    wallUs: medianOf(costs.map((k) => k.idle.wallUsP50)),
    cpuUs: medianOf(costs.map((k) => k.idle.cpuUsPerCall)),
  };

  const stats = rows.map((c) => ({
    c,
    s: summarize(c.samples),
    call: summarize(c.calls),
    server: summarize(c.serverMs),
    queue: summarize(c.queueMs),
    bytes: c.payloadBytes.reduce((a, b) => a + b, 0) / Math.max(1, c.payloadBytes.length),
  }));
  const byRole = (role: Config["role"]) => stats.find((x) => x.c.role === role)!;
  const echo = byRole("echo").s;
  const floorStats = byRole("floor");
  const zero = byRole("offload");
  const delay2 = byRole("offload2");
  const fmt = (x: number) => (Number.isFinite(x) ? x.toFixed(3) : "-");
  console.log(
    `offload round trip through Mosquitto on loopback (one request in flight, closed loop); bundle ${manifest.name} ${manifest.version}; ` +
      `features [${work[0]!.dims.join(", ")}] as ${encoding.dtype}+${encoding.compression}; ` +
      (gatewayMode
        ? `ddnn gateway (own process, its pool defaults) on stage ${next.name}, ddnn server (own process, 2 workers, maxBatch 32) on stage ${lastStage}; `
        : `server: own process, ${workers} workers, maxBatch 32; `) +
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
        "upstream compute p50",
        "upstream queue p50",
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
      "call: from the offload() call, features encoding included (the echo encodes its frames with the same function, encodeRequestFrame, at every call). upstream compute/queue: the reply's timings, every tier's own entry (server; gateway edge, and server after it) and their queues, ms",
  );
  const errors = stats.reduce(
    (n, { c }) => n + [...c.errors.values()].reduce((a, b) => a + b, 0),
    0,
  );
  // Both goals compare calls (features encoded, published, answered) of rows that all encode the
  // same way, so the encoding cancels out of the difference and is in both sides of the ratio.
  const echoCall = byRole("echo").call.p50;
  const overheadMs = zero.call.p50 - echoCall;
  const computeMs = zero.server.p50;
  const overCompute = overheadMs / computeMs;
  const floorRatio = floorStats.call.p50 / echoCall;
  console.log(
    `session.run of stage ${next.name} alone in this process, batch 1: ${fmt(runBackToBack.wallUs / 1000)} ms wall (${fmt(runBackToBack.cpuUs / 1000)} ms CPU) back-to-back, ` +
      `${fmt(runIdle.wallUs / 1000)} ms wall (${fmt(runIdle.cpuUs / 1000)} ms CPU) after 1 ms idle; the ${tierName}'s reply timings (compute p50 ${fmt(computeMs)} ms) are the idle regime: one request at a time`,
  );
  console.log(
    `offload minus echo (call p50): ${fmt(overheadMs)} ms = ${ratio(overCompute)} the ${tierName}'s compute p50; protocol floor ${ratio(floorRatio)} the echo's call p50 ` +
      `(round trips: offload ${ratio(zero.s.p50 / echo.p50)}, floor ${ratio(floorStats.s.p50 / echo.p50)} the echo's)`,
  );
  const forwarded = gatewayMode ? byRole("forwarded") : undefined;
  const relay = gatewayMode ? byRole("relay") : undefined;
  const forwardedOver =
    forwarded && relay ? (forwarded.call.p50 - relay.call.p50) / forwarded.server.p50 : Number.NaN;
  const code = printGoals([
    ...(forwarded && relay
      ? [
          {
            name: `5 (gateway): an offload answered by the gateway's exit, call p50 minus echo call p50 at most 2.0x its compute p50 (gateway --max-delay-ms ${defaultDelay})`,
            met: overCompute <= 2 && errors === 0 && zero.s.n > 0,
            detail: `${ratio(overCompute)}: ${fmt(zero.call.p50)} - ${fmt(echoCall)} = ${fmt(overheadMs)} ms against compute ${fmt(computeMs)} ms${errors ? `; ${errors} requests failed` : ""}`,
          },
          {
            name: "5 (gateway): an offload the gateway forwards to the server, call p50 minus the relayed echo's (3 hops) at most 2.0x the gateway's and server's compute p50",
            met: forwardedOver <= 2 && errors === 0 && forwarded.s.n > 0,
            detail: `${ratio(forwardedOver)}: ${fmt(forwarded.call.p50)} - ${fmt(relay.call.p50)} ms against compute ${fmt(forwarded.server.p50)} ms`,
          },
          {
            name: "5 (gateway): protocol floor call p50 at most 1.3x the echo call p50 (the gateway bundle's features)",
            met: floorRatio <= 1.3 && floorStats.s.n > 0,
            detail: `${ratio(floorRatio)}: ${fmt(floorStats.call.p50)} ms against ${fmt(echoCall)} ms`,
          },
        ]
      : [
          {
            name: `1: offload call p50 minus echo call p50 at most 2.0x the server's compute p50 (server --max-delay-ms ${defaultDelay})`,
            met: overCompute <= 2 && errors === 0 && zero.s.n > 0,
            detail: `${ratio(overCompute)}: ${fmt(zero.call.p50)} - ${fmt(echoCall)} = ${fmt(overheadMs)} ms against compute ${fmt(computeMs)} ms${errors ? `; ${errors} requests failed` : ""}`,
          },
          {
            name: "2: protocol floor call p50 at most 1.3x the echo call p50 (both encode every request)",
            met: floorRatio <= 1.3 && floorStats.s.n > 0,
            detail: `${ratio(floorRatio)}: ${fmt(floorStats.call.p50)} ms against ${fmt(echoCall)} ms`,
          },
        ]),
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
      tier: values.tier,
      bundle: `${manifest.name}@${manifest.version}`,
      encoding: `${encoding.dtype}+${encoding.compression}`,
      payloadBytes: Math.round(zero.bytes),
      rounds: roundsDone,
      requestsPerRound: requests,
      echo: { ...summary(echo), callP50Ms: round(echoCall) },
      protocolFloor: { ...summary(floorStats.s), callP50Ms: round(floorStats.call.p50) },
      offload: {
        maxDelayMs: defaultDelay,
        ...summary(zero.s),
        callP50Ms: round(zero.call.p50),
        callP99Ms: round(zero.call.p99),
        serverComputeP50Ms: round(computeMs),
      },
      offloadMaxDelay2: {
        maxDelayMs: 2,
        ...summary(delay2.s),
        callP50Ms: round(delay2.call.p50),
        callP99Ms: round(delay2.call.p99),
      },
      sessionRunBatch1: {
        backToBack: {
          wallUs: round(runBackToBack.wallUs, 1),
          cpuUs: round(runBackToBack.cpuUs, 1),
        },
        afterIdle1Ms: { wallUs: round(runIdle.wallUs, 1), cpuUs: round(runIdle.cpuUs, 1) },
      },
      overheadOverCompute: round(overCompute, 3),
      ...(forwarded && relay
        ? {
            relay: { ...summary(relay.s), callP50Ms: round(relay.call.p50) },
            forwarded: {
              ...summary(forwarded.s),
              callP50Ms: round(forwarded.call.p50),
              computeP50Ms: round(forwarded.server.p50),
            },
            forwardedOverCompute: round(forwardedOver, 3),
          }
        : {}),
      floorCallRatio: round(floorRatio, 3),
      ratioP50: round(zero.s.p50 / echo.p50, 3),
      ratioP99: round(zero.s.p99 / echo.p99, 3),
      ratioP50Floor: round(floorStats.s.p50 / echo.p50, 3),
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
