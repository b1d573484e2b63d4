/**
 * One device floods, fifteen keep their latency (issue 11, "bad input and overload"). A real
 * Mosquitto 2 and `ddnn server` in its own process (one worker, batches of at most 4, the other
 * flags at their defaults) serve a model whose server stage costs a few milliseconds per sample
 * (1,536 Gemm+Relu layers of 256), so the server computes at most a few hundred samples a second
 * on this kind of machine (150 a second were measured at load 13). Fifteen devices send 5
 * requests a second each, open loop; in the middle window a sixteenth sends 1,000 a second, open
 * loop: several times what the server can compute at all.
 *
 * What holds it: the flooder may have `--max-in-flight-per-client` requests in flight (default a
 * quarter of `--max-queue`, here 256 of 1024), the rest are answered `overloaded` before their
 * body is decoded; the batcher takes one request of each client in turn, so the fifteen's
 * requests go into the next batch whatever the flooder has queued. Checked: the fifteen's p50 and
 * p99 during the flood against the quiet windows before and after it (same run, same machine:
 * a ratio, generous for a loaded 2-core machine), no error answer for the fifteen, `overloaded`
 * answers for the flooder, exactly one answer for every request, and the server's
 * ddnn_refusals_total{reason="client_limit"} equal to the flooder's overloaded answers.
 *
 * DDNN_FLOOD_TEST_LIMIT=0 runs the same test with the per-client limit off (`--max-queue` alone,
 * as before the limit): then the flooder fills the queue and the fifteen get `overloaded`.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import mqtt, { type MqttClient } from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  metricSum,
  type ServerProcess,
  startServerProcess,
} from "../bench/support/server-process.js";
import { GraphBuilder, writeTestBundle } from "../codegen/test-models.js";
import { readBundle } from "../core/bundle/read.js";
import { summarize } from "../core/stats.js";
import { encodeFrame } from "../core/wire/frame.js";
import { encodeTensor } from "../core/wire/tensor.js";
import { type Mosquitto, startMosquitto } from "./support/mosquitto.js";

const MODEL = "default/flood";
const REQUESTS = "ddnn/default/flood/server/req";
const F = 256;
/** Gemm+Relu layers of the server stage (one shared F x F weight): 3-5 ms a sample here. */
const LAYERS = 1536;
const DEVICES = 15;
const DEVICE_HZ = 5;
const FLOOD_HZ = 1000;
const QUIET_MS = 3000;
const FLOOD_MS = 4000;
/** Requests sent this soon after the flood starts or stops are in neither window. */
const SETTLE_MS = 500;
const DEADLINE_MS = 8000;
const LIMIT = process.env.DDNN_FLOOD_TEST_LIMIT;
const MAX_BATCH = 4;
// Generous: on a 2-core machine the flood's own CPU (the worker busy all the time, the flooder's
// frames and refusals through the broker and the server's MQTT thread) slows every process down;
// measured here at load 7-13 in 17 runs: 15 at x1.9-x5.9 (p50) and x0.8-x13.7 (p99), two at x21
// and x118 (p50) while the machine starved the server for seconds (those fail). Without the round robin the fifteen
// would wait behind the flooder's 256 queued requests: ~64 batches, a second.
const P50_FACTOR = 15;
const P99_FACTOR = 20;
/** The fifteen's wait in the server's queue during the flood, in batches (FIFO: ~64). */
const QUEUE_BATCHES = 5;

/** Two stages: the device's (a Relu, never run here) and the server's, heavy on purpose. */
function floodBundle(): string {
  const dev = new GraphBuilder();
  dev.input("x", ["batch", F]);
  dev.node("Gemm", [dev.node("Relu", ["x"], {}, "h"), dev.weight([F, 4])], {}, "y0");
  dev.output("y0", ["batch", 4]).output("h", ["batch", F]);
  const srv = new GraphBuilder();
  srv.input("h", ["batch", F]);
  // He-uniform scale keeps the activations in range through every layer.
  const w = srv.weight([F, F], undefined, Math.sqrt(6 / F));
  let t = "h";
  for (let i = 0; i < LAYERS; i++) t = srv.node("Relu", [srv.node("Gemm", [t, w])]);
  srv.node("Gemm", [t, srv.weight([F, 4])], {}, "y1");
  srv.output("y1", ["batch", 4]);
  return writeTestBundle(mkdtempSync(join(tmpdir(), "ddnn-flood-")), {
    name: "flood",
    input: { shape: [F], scale: 1, mean: [0], std: [1] },
    classes: 4,
    stages: [
      {
        name: "device",
        onnx: dev.bytes(),
        input: "x",
        features: "h",
        logits: "y0",
        threshold: 0.5,
      },
      { name: "server", onnx: srv.bytes(), input: "h", logits: "y1" },
    ],
  });
}

interface Sent {
  readonly id: string;
  readonly t0: number;
  /** Time of the first reply. */
  t1?: number;
  code?: string;
  message?: string;
  /** The reply's timings: the server's queue wait and compute, ms. */
  queueMs?: number;
  computeMs?: number;
  replies: number;
}

/**
 * A device as a small C client would be: its own connection and reply topic, frames built from a
 * body encoded once, every reply frame counted by id (a duplicate shows).
 */
class Device {
  readonly sent = new Map<string, Sent>();
  private n = 0;
  private constructor(
    private readonly client: MqttClient,
    readonly name: string,
    private readonly header: Record<string, unknown>,
    private readonly body: Uint8Array,
  ) {}

  static async open(url: string, name: string, digest: string, seed: number): Promise<Device> {
    const client = await mqtt.connectAsync(url, {
      protocolVersion: 4,
      clientId: `flood-${name}-${process.pid}`,
      clean: true,
    });
    (client.stream as { setNoDelay?: (v: boolean) => void }).setNoDelay?.(true);
    const replyTo = `ddnn/default/flood/reply/${name}`;
    const x = Float32Array.from({ length: F }, (_, i) => Math.sin(i * 0.37 + seed) + 0.25);
    const { fields, body } = encodeTensor(x, [1, F], { dtype: "f32", compression: "none" });
    const d = new Device(
      client,
      name,
      { kind: "infer", model: MODEL, digest, stage: 1, replyTo, ...fields },
      body,
    );
    client.on("message", (_topic, payload) => {
      const h = payload.readUInt32LE(4);
      const reply = JSON.parse(payload.toString("utf8", 8, 8 + h)) as {
        id: string;
        status: string;
        error?: { code: string; message: string };
        timings?: { server?: number; serverQueue?: number };
      };
      const s = d.sent.get(reply.id);
      if (!s) return;
      s.replies++;
      if (s.replies > 1) return;
      s.t1 = performance.now();
      s.code = reply.status === "ok" ? "ok" : (reply.error?.code ?? "?");
      if (reply.error) s.message = reply.error.message;
      s.queueMs = reply.timings?.serverQueue;
      s.computeMs = reply.timings?.server;
    });
    await client.subscribeAsync(replyTo, { qos: 1 });
    return d;
  }

  send(): void {
    const id = `${this.name}-${++this.n}`;
    const now = Date.now();
    const frame = encodeFrame(
      { ...this.header, id, deadline: now + DEADLINE_MS, sentAt: now },
      this.body,
    );
    this.sent.set(id, { id, t0: performance.now(), replies: 0 });
    this.client.publish(REQUESTS, Buffer.from(frame), { qos: 1 });
  }

  get answered(): number {
    let n = 0;
    for (const s of this.sent.values()) if (s.replies > 0) n++;
    return n;
  }

  close(): Promise<void> {
    return this.client.endAsync();
  }
}

/** The sum of a metric's series whose labels include `label`. */
function counted(text: string, name: string, label: string): number {
  let sum = 0;
  for (const line of text.split("\n"))
    if (line.startsWith(`${name}{`) && line.includes(label))
      sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  return sum;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Sends `hz` requests a second from `device` until `until` (performance.now()), open loop. */
async function pace(device: Device, hz: number, until: number, phase: number): Promise<void> {
  const start = performance.now() + phase;
  let sent = 0;
  for (;;) {
    const now = performance.now();
    if (now >= until) return;
    const due = Math.floor(((now - start) * hz) / 1000) - sent;
    for (let k = 0; k < due; k++) device.send();
    sent += Math.max(0, due);
    await sleep(Math.min(1000 / hz, 5));
  }
}

let broker: Mosquitto;
let server: ServerProcess;
let bundle: string;
let digest: string;

beforeAll(async () => {
  broker = await startMosquitto();
  bundle = floodBundle();
  digest = (await readBundle(bundle)).digest;
  server = await startServerProcess({
    bundle,
    broker: broker.url,
    model: MODEL,
    workers: 1,
    maxBatch: MAX_BATCH,
    extraArgs: LIMIT === undefined ? [] : ["--max-in-flight-per-client", LIMIT],
  });
}, 90_000);
afterAll(async () => {
  await server?.stop();
  await broker?.stop();
});

describe("one device floods the server while fifteen others send at a modest rate", () => {
  it("the fifteen keep their latency and get no overloaded; the flooder is refused; every request gets one answer", async () => {
    const devices = await Promise.all(
      Array.from({ length: DEVICES }, (_, i) => Device.open(broker.url, `cam-${i}`, digest, i)),
    );
    const flooder = await Device.open(broker.url, "flooder", digest, 99);
    try {
      // Warm-up: JIT, first batches, connections.
      await Promise.all(devices.map((d) => pace(d, DEVICE_HZ, performance.now() + 1000, 0)));
      const t0 = performance.now() + 100;
      const floodFrom = t0 + QUIET_MS;
      const floodTo = floodFrom + FLOOD_MS;
      const end = floodTo + QUIET_MS;
      const before = await server.metrics();
      await Promise.all([
        ...devices.map((d, i) => pace(d, DEVICE_HZ, end, (i * 1000) / DEVICE_HZ / DEVICES)),
        sleep(floodFrom - performance.now()).then(async () => {
          await server.eld("start");
          await pace(flooder, FLOOD_HZ, floodTo, 0);
          await server.eld("stop");
        }),
      ]);
      const eld = await server.readEld();
      const everyone = [...devices, flooder];
      const total = everyone.reduce((n, d) => n + d.sent.size, 0);
      const deadline = performance.now() + DEADLINE_MS + 2000;
      while (everyone.some((d) => d.answered < d.sent.size) && performance.now() < deadline)
        await sleep(50);
      // Late duplicates would arrive now.
      await sleep(300);
      const after = await server.metrics();

      const mine = devices.flatMap((d) => [...d.sent.values()]);
      const window = (from: number, to: number) =>
        mine.filter((s) => s.t0 >= from && s.t0 < to && s.t1 !== undefined);
      const latency = (xs: Sent[]) => summarize(xs.map((s) => s.t1! - s.t0));
      const quiet = latency([
        ...window(t0 + SETTLE_MS, floodFrom),
        ...window(floodTo + SETTLE_MS, end),
      ]);
      const flooded = latency(window(floodFrom + SETTLE_MS, floodTo));
      const codes = (xs: Iterable<Sent>) => {
        const out: Record<string, number> = {};
        for (const s of xs) out[s.code ?? "none"] = (out[s.code ?? "none"] ?? 0) + 1;
        return out;
      };
      const floodCodes = codes(flooder.sent.values());
      const refusals = (reason: string) =>
        counted(after, "ddnn_refusals_total", `reason="${reason}"`) -
        counted(before, "ddnn_refusals_total", `reason="${reason}"`);
      const batches =
        metricSum(after, "ddnn_batch_size_count") - metricSum(before, "ddnn_batch_size_count");
      const samples =
        metricSum(after, "ddnn_batch_size_sum") - metricSum(before, "ddnn_batch_size_sum");
      const busy =
        metricSum(after, "ddnn_worker_busy_seconds_total") -
        metricSum(before, "ddnn_worker_busy_seconds_total");
      const fmt = (x: number) => x.toFixed(2);
      const inServer = (xs: Sent[]) =>
        `server queue p50 ${fmt(summarize(xs.map((s) => s.queueMs ?? 0)).p50)} ms, compute p50 ${fmt(summarize(xs.map((s) => s.computeMs ?? 0)).p50)} ms`;
      console.log(
        [
          `per-client limit: ${LIMIT ?? "default (a quarter of --max-queue: 256)"}`,
          `fifteen, quiet windows: n=${quiet.n} p50 ${fmt(quiet.p50)} ms p99 ${fmt(quiet.p99)} ms`,
          `fifteen, during flood:  n=${flooded.n} p50 ${fmt(flooded.p50)} ms p99 ${fmt(flooded.p99)} ms (x${fmt(flooded.p50 / quiet.p50)}, x${fmt(flooded.p99 / quiet.p99)})`,
          `fifteen, quiet windows: ${inServer([...window(t0 + SETTLE_MS, floodFrom), ...window(floodTo + SETTLE_MS, end)])}`,
          `fifteen, during flood: ${inServer(window(floodFrom + SETTLE_MS, floodTo))}`,
          `fifteen, answers: ${JSON.stringify(codes(mine))}`,
          `flooder: sent ${flooder.sent.size} in ${FLOOD_MS} ms (${Math.round(flooder.sent.size / (FLOOD_MS / 1000))}/s), answers ${JSON.stringify(floodCodes)}`,
          `server: refusals client_limit ${refusals("client_limit")}, queue_full ${refusals("queue_full")}; ${batches} batches, mean ${fmt(samples / Math.max(1, batches))} samples, worker busy ${fmt(busy)} s of ${fmt((end - t0) / 1000)} s`,
          `server MQTT thread during the flood: event-loop delay p50 ${fmt(eld.p50Ms)} ms, p99 ${fmt(eld.p99Ms)} ms, max ${fmt(eld.maxMs)} ms`,
          `requests ${total}, replies ${everyone.reduce((n, d) => n + [...d.sent.values()].reduce((m, s) => m + s.replies, 0), 0)}`,
        ].join("\n"),
      );

      // Every request of everybody: exactly one answer.
      for (const d of everyone)
        expect(
          [...d.sent.values()].filter((s) => s.replies !== 1).map((s) => `${s.id}: ${s.replies}`),
          d.name,
        ).toEqual([]);
      // The fifteen: answered, never refused, latency kept.
      expect(codes(mine)).toEqual({ ok: mine.length });
      expect(quiet.n).toBeGreaterThan(50);
      expect(flooded.n).toBeGreaterThan(200);
      expect(flooded.p50).toBeLessThanOrEqual(P50_FACTOR * quiet.p50);
      expect(flooded.p99).toBeLessThanOrEqual(P99_FACTOR * quiet.p99);
      // The round robin: in the server's queue they wait for about a batch, not for the flood.
      const during = window(floodFrom + SETTLE_MS, floodTo);
      const batchMs = summarize(during.map((s) => s.computeMs ?? 0)).p50 * MAX_BATCH;
      expect(summarize(during.map((s) => s.queueMs ?? 0)).p50).toBeLessThanOrEqual(
        QUEUE_BATCHES * batchMs,
      );
      // The flooder: far more than the server computes, the excess refused by its limit.
      expect(flooder.sent.size).toBeGreaterThan(0.5 * FLOOD_HZ * (FLOOD_MS / 1000));
      expect(floodCodes.overloaded ?? 0).toBeGreaterThan(flooder.sent.size / 4);
      expect((floodCodes.ok ?? 0) + (floodCodes.overloaded ?? 0)).toBe(flooder.sent.size);
      const refused = [...flooder.sent.values()].find((s) => s.code === "overloaded");
      expect(refused?.message).toMatch(/per-client limit \(max-in-flight-per-client\)/);
      expect(refusals("client_limit")).toBe(floodCodes.overloaded);
      expect(refusals("queue_full")).toBe(0);
    } finally {
      await Promise.all([...devices, flooder].map((d) => d.close()));
    }
  }, 60_000);
});
