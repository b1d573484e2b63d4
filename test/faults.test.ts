/**
 * Faults against a real broker (Mosquitto 2). The rule every test checks: no request ever ends
 * without a result. The broker dies mid-run, a server worker dies under load, garbage arrives on
 * the request topic, the queue overflows: every request still gets an answer (degraded, an error
 * reply, or, for frames nobody can answer, a drop that is counted), and everybody else is served.
 */
import { deflateSync } from "node:zlib";
import mqtt, { type MqttClient } from "mqtt";
import { type Logger, pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExitPolicy } from "../core/exit.js";
import { isForward, Pipeline, type SampleResult } from "../core/pipeline.js";
import { makeLogger } from "../core/runtime/tier.js";
import { encodeFrame } from "../core/wire/frame.js";
import { encodeTensor } from "../core/wire/tensor.js";
import type { Answer } from "../device-agent/agent.js";
import { serverSchema } from "../server/config.js";
import { type RunningServer, startServer } from "../server/server.js";
import { type FixtureStage, pseudoPixels, writeBundle } from "./support/bundle-fixture.js";
import { startFog, waitFor } from "./support/fog.js";
import { type Mosquitto, startMosquitto } from "./support/mosquitto.js";

const MODEL = "default/faults";
const STAGE_TOPIC = "ddnn/default/faults/server/req";
const F = 16;

const stages: FixtureStage[] = [
  {
    name: "device",
    inputName: "x",
    inShape: [3, 2, 2],
    featuresName: "h",
    featureSize: F,
    logitsName: "y0",
    classes: 4,
    seed: 21,
    threshold: 0.1,
  },
  { name: "server", inputName: "h", inShape: [F], logitsName: "y1", classes: 4, seed: 23 },
];

function pixels(n: number, seed: number): Uint8Array {
  return pseudoPixels(n, 12, seed);
}

const sample = (px: Uint8Array, i: number) => px.subarray(i * 12, (i + 1) * 12);

let mosquitto: Mosquitto;
let dir: string;
let digest: string;
let reference: Pipeline;
let features: Float32Array[];
let serverAnswer: { stage: number; label: number }[];

beforeAll(async () => {
  mosquitto = await startMosquitto();
  dir = writeBundle(stages, {
    input: { shape: [3, 2, 2], mean: [0.2, 0.4, 0.6], std: [0.3, 0.3, 0.5] },
    edit: (m) => {
      m.name = "faults";
    },
  }).dir;
  reference = await Pipeline.load(dir);
  digest = reference.bundle.digest;
  // Stage-0 features of 64 samples and the server's answer for each.
  const n = 64;
  const never = new ExitPolicy([0, undefined]);
  const fwd = await reference.runRange(0, 0, reference.inputTensor(pixels(n, 99), n), never);
  features = fwd.map((r) => {
    if (!isForward(r)) throw new Error("stage 0 answered with threshold 0");
    return r.forward.features;
  });
  const all = new Float32Array(n * F);
  features.forEach((f, i) => {
    all.set(f, i * F);
  });
  const out = (await reference.runRange(1, 1, reference.tensor(all, [n, F]))) as SampleResult[];
  serverAnswer = out.map((r) => ({ stage: r.stage, label: r.label }));
});
afterAll(async () => {
  await reference?.release();
  await mosquitto?.stop();
});

const quiet = () => makeLogger(process.env.DDNN_TEST_LOG ?? "error", "server");

async function server(
  url: string,
  options: Record<string, unknown>,
  log: Logger = quiet(),
): Promise<RunningServer> {
  const s = await startServer(
    serverSchema.parse({
      bundle: dir,
      broker: url,
      httpHost: "127.0.0.1",
      httpPort: 0,
      ...options,
    }),
    log,
  );
  await waitFor(() => s.service.subscribed, 5000, "server subscribed");
  return s;
}

/** A hand-driven MQTT 3.1.1 client that sends raw frames and collects every reply by id. */
class RawClient {
  readonly replies = new Map<string, Record<string, unknown>[]>();
  readonly unreadable: Buffer[] = [];
  private constructor(
    readonly client: MqttClient,
    readonly replyTo: string,
  ) {}

  static async open(url: string, name: string): Promise<RawClient> {
    const client = await mqtt.connectAsync(url, { protocolVersion: 4, clientId: `${name}-raw` });
    const replyTo = `ddnn/default/faults/reply/${name}`;
    const raw = new RawClient(client, replyTo);
    client.on("message", (_topic, payload) => {
      try {
        const h = payload.readUInt32LE(4);
        const header = JSON.parse(payload.toString("utf8", 8, 8 + h)) as Record<string, unknown>;
        const id = String(header.id);
        raw.replies.set(id, [...(raw.replies.get(id) ?? []), header]);
      } catch {
        raw.unreadable.push(payload);
      }
    });
    await client.subscribeAsync(replyTo, { qos: 1 });
    return raw;
  }

  /** A valid request header for sample `i` of the features, with `overrides`. */
  header(id: string, overrides: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      kind: "infer",
      id,
      model: MODEL,
      digest,
      stage: 1,
      replyTo: this.replyTo,
      deadline: Date.now() + 10_000,
      dtype: "f32",
      shape: [1, F],
      compression: "none",
      ...overrides,
    };
  }

  /** A valid f32 request frame for sample `i`. */
  request(id: string, i: number, overrides: Record<string, unknown> = {}): Buffer {
    const { fields, body } = encodeTensor(features[i % features.length]!, [1, F], {
      dtype: "f32",
      compression: "none",
    });
    return Buffer.from(encodeFrame(this.header(id, { ...fields, ...overrides }), body));
  }

  publish(payload: Buffer | Uint8Array, topic = STAGE_TOPIC): void {
    this.client.publish(topic, Buffer.from(payload), { qos: 1 });
  }

  async waitAll(ids: readonly string[], timeoutMs = 10_000): Promise<void> {
    await waitFor(
      () => ids.every((id) => this.replies.has(id)),
      timeoutMs,
      `replies to ${ids.filter((id) => !this.replies.has(id)).length} of ${ids.length} requests`,
    );
  }

  close(): Promise<void> {
    return this.client.endAsync();
  }
}

async function metric(port: number, name: string, labels = ""): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (labels && !line.includes(labels)) continue;
    sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

describe("faults against a real Mosquitto: no request ends without a result", () => {
  it("the broker is killed mid-run: every classify() answers within its deadline, and the tiers recover when it returns", async () => {
    // Its own broker: this test kills it.
    const broker = await startMosquitto();
    const deadlineMs = 400;
    const slackMs = 200;
    const fog = await startFog({
      bundle: dir,
      broker: broker.url,
      stageNames: stages.map((s) => s.name),
      sharedSubscriptions: true,
      devices: 2,
      deadlineMs,
    });
    const px = pixels(64, 7);
    const full = await reference.infer(px, 64);
    const local = (await reference.runRange(0, 0, reference.inputTensor(px, 64))) as SampleResult[];
    interface Call {
      i: number;
      t0: number;
      t1?: number;
      answer?: Answer;
      error?: unknown;
      phase: string;
    }
    const calls: Call[] = [];
    const pending = new Set<Promise<void>>();
    let phase = "before";
    let running = true;
    let n = 0;
    // Two cameras, each classifying a frame every 10 ms whatever happens to the broker.
    const drivers = fog.agents.map(async (a) => {
      while (running) {
        const call: Call = { i: n++ % 64, t0: performance.now(), phase };
        calls.push(call);
        const p = a.agent
          .classify(sample(px, call.i))
          .then(
            (answer) => {
              call.answer = answer;
            },
            (error: unknown) => {
              call.error = error;
            },
          )
          .finally(() => {
            call.t1 = performance.now();
            pending.delete(p);
          });
        pending.add(p);
        await new Promise((r) => setTimeout(r, 10));
      }
    });
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    try {
      await sleep(500);
      phase = "down";
      const killedAt = performance.now();
      await broker.kill();
      await sleep(1500);
      phase = "recovering";
      const restarted = performance.now();
      await broker.restart();
      // Agents and server reconnect on their own (backoff), then answers stop being degraded.
      await waitFor(
        () =>
          fog.agents.every((a) => a.client.connected && a.offload.subscribed) &&
          fog.server!.service.subscribed &&
          calls.some((c) => c.phase === "recovering" && c.answer && !c.answer.degraded),
        15_000,
        "the fog to recover after the broker restart",
      );
      const recoveredMs = performance.now() - restarted;
      phase = "after";
      await sleep(500);
      running = false;
      await Promise.all(drivers);
      await Promise.all([...pending]);

      // Every call resolved, with an answer, within its deadline plus a little.
      expect(calls.filter((c) => c.error !== undefined || !c.answer)).toEqual([]);
      const late = calls.filter((c) => c.t1! - c.t0 > deadlineMs + slackMs);
      expect(late.map((c) => [c.phase, Math.round(c.t1! - c.t0)])).toEqual([]);
      // Degraded answers are the device's own exit, for a reason the agent names.
      for (const c of calls.filter((c) => c.answer!.degraded)) {
        expect(["broker_unreachable", "deadline"]).toContain(c.answer!.reason);
        expect([c.answer!.tier, c.answer!.stageIndex, c.answer!.label]).toEqual([
          "device",
          0,
          local[c.i]!.label,
        ]);
      }
      // Answers that were not degraded are the pipeline's answers.
      for (const c of calls.filter((c) => !c.answer!.degraded))
        expect([c.answer!.stageIndex, c.answer!.label]).toEqual([
          full[c.i]!.stage,
          full[c.i]!.label,
        ]);
      const by = (p: string) => calls.filter((c) => c.phase === p);
      expect(by("before").length).toBeGreaterThan(20);
      // Calls answered before the kill were not degraded (those in flight at the kill may be).
      expect(by("before").filter((c) => c.t1! < killedAt && c.answer!.degraded)).toEqual([]);
      expect(by("down").length).toBeGreaterThan(50);
      expect(
        by("down").filter((c) => c.answer!.degraded && c.answer!.reason === "broker_unreachable")
          .length,
      ).toBeGreaterThan(0);
      // Whatever the device exit could not answer while the broker was down was degraded.
      expect(by("down").filter((c) => full[c.i]!.stage > 0 && !c.answer!.degraded)).toEqual([]);
      expect(by("after").length).toBeGreaterThan(20);
      expect(by("after").filter((c) => c.answer!.degraded)).toEqual([]);
      expect(recoveredMs).toBeLessThan(10_000);
      const degraded = await Promise.all(
        fog.agents.map((a) => metric(a.port, "ddnn_degraded_total", 'reason="broker_unreachable"')),
      );
      expect(degraded.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    } finally {
      running = false;
      await Promise.all(drivers);
      await fog.close();
      await broker.stop();
    }
  });

  it("the broker dies with requests in flight and stays down: every request is answered (degraded) and every tier still shuts down", async () => {
    const broker = await startMosquitto();
    const deadlineMs = 1000;
    const fog = await startFog({
      bundle: dir,
      broker: broker.url,
      stageNames: stages.map((s) => s.name),
      sharedSubscriptions: true,
      devices: 1,
      deadlineMs,
      workers: 1,
      maxBatch: 1,
    });
    let closed = false;
    try {
      const a = fog.agents[0]!;
      const px = pixels(64, 5);
      const calls: Promise<{ ms: number; answer: Answer }>[] = [];
      const classify = (i: number) => {
        const t0 = performance.now();
        return a.agent
          .classify(sample(px, i % 64))
          .then((answer) => ({ ms: performance.now() - t0, answer }));
      };
      // Bursts of requests until the server holds work it has not answered yet and the agent
      // has requests out, then the broker dies in the middle of it.
      const until = performance.now() + 5000;
      while (
        performance.now() < until &&
        !(fog.server!.service.pending > 10 && a.offload.pending > 10)
      ) {
        for (let k = 0; k < 40; k++) calls.push(classify(calls.length));
        await new Promise((r) => setTimeout(r, 2));
      }
      expect(fog.server!.service.pending).toBeGreaterThan(10);
      await broker.kill();
      for (let k = 0; k < 25; k++) calls.push(classify(calls.length));
      const results = await Promise.all(calls);
      expect(results.filter((r) => r.ms > deadlineMs + 150).map((r) => r.ms)).toEqual([]);
      const degraded = results.filter((r) => r.answer.degraded);
      expect(degraded.length).toBeGreaterThan(0);
      for (const r of degraded) expect(r.answer.reason).toBe("broker_unreachable");
      // Shutdown does not wait for replies and acknowledgements that can never come.
      const t0 = performance.now();
      const shutdown = fog.close().then(() => {
        closed = true;
      });
      await Promise.race([shutdown, new Promise((r) => setTimeout(r, 5000))]);
      expect(closed, "the tiers did not shut down with the broker gone").toBe(true);
      expect(performance.now() - t0).toBeLessThan(5000);
    } finally {
      // A shutdown that hung would end once the broker is back.
      if (!closed) await broker.restart();
      await fog.close();
      await broker.stop();
    }
  });

  it("a server worker is killed under load: the pool replaces it, every request in its hands is answered or fails cleanly", async () => {
    const exits: { inFlight: number }[] = [];
    const log = pino(
      { level: "warn" },
      {
        write(line: string) {
          const record = JSON.parse(line) as { msg: string; inFlight?: number };
          if (record.msg.startsWith("inference worker exited"))
            exits.push({ inFlight: record.inFlight ?? 0 });
        },
      },
    );
    const s = await server(
      mosquitto.url,
      { workers: 2, maxBatch: 4, maxDelayMs: 2, maxQueue: 100_000 },
      log,
    );
    const raw = await RawClient.open(mosquitto.url, "crash");
    try {
      const ids: string[] = [];
      let crashes = 0;
      // 1,500 requests in waves, and a worker killed whenever one is busy, until 3 died busy.
      for (let wave = 0; wave < 60; wave++) {
        for (let k = 0; k < 25; k++) {
          const id = `crash-${wave}-${k}`;
          ids.push(id);
          raw.publish(raw.request(id, ids.length));
        }
        for (let spin = 0; spin < 40 && exits.filter((e) => e.inFlight > 0).length < 3; spin++) {
          if (s.pool.inFlight > 0 && s.pool.readyWorkers === 2 && exits.length === crashes) {
            if (s.pool.crashOne()) crashes++;
            break;
          }
          await new Promise((r) => setImmediate(r));
        }
        await new Promise((r) => setTimeout(r, 5));
      }
      await raw.waitAll(ids, 20_000);
      // Exactly one reply per request: the pipeline's answer, or a clean error.
      const replies = ids.map((id) => raw.replies.get(id)!);
      expect(replies.filter((r) => r.length !== 1)).toEqual([]);
      const errors = replies.map((r) => r[0]!).filter((h) => h.status !== "ok");
      for (const h of errors)
        expect(h).toMatchObject({ status: "error", error: { code: "internal" } });
      ids.forEach((id, n) => {
        const h = raw.replies.get(id)![0]!;
        if (h.status === "ok") {
          const want = serverAnswer[(n + 1) % features.length]!;
          expect([h.stage, h.label]).toEqual([want.stage, want.label]);
        }
      });
      expect(errors.length).toBeLessThan(ids.length / 100);
      // The workers died with requests in their hands, and the pool replaced every one.
      expect(crashes).toBeGreaterThanOrEqual(1);
      await waitFor(() => exits.length === crashes, 5000, "every crash reported");
      expect(exits.some((e) => e.inFlight > 0)).toBe(true);
      await waitFor(() => s.pool.readyWorkers === 2, 10_000, "the pool to replace its workers");
      expect(await metric(s.port, "ddnn_worker_restarts_total")).toBe(crashes);
      // And it keeps serving.
      raw.publish(raw.request("after-crash", 0));
      await raw.waitAll(["after-crash"]);
      expect(raw.replies.get("after-crash")![0]).toMatchObject({
        status: "ok",
        label: serverAnswer[0]!.label,
      });
    } finally {
      await raw.close();
      await s.close();
    }
  });

  it("malformed frames get the right error reply or are dropped and counted, while other clients are served", async () => {
    const maxFrameBytes = 4096;
    const fog = await startFog({
      bundle: dir,
      broker: mosquitto.url,
      stageNames: stages.map((s) => s.name),
      sharedSubscriptions: true,
      devices: 2,
      deadlineMs: 10_000,
      extra: { maxFrameBytes },
    });
    const s = fog.server!;
    let serverDisconnects = 0;
    const onServerClose = () => {
      serverDisconnects++;
    };
    s.client.on("close", onServerClose);
    const fuzz = await RawClient.open(mosquitto.url, "fuzz");
    const good = await RawClient.open(mosquitto.url, "good");
    try {
      const dropped0 = await metric(s.port, "ddnn_frames_dropped_total");
      const frame = (header: unknown, body: Uint8Array = new Uint8Array(0)) => {
        const json = Buffer.from(JSON.stringify(header));
        const length = Buffer.alloc(4);
        length.writeUInt32LE(json.length);
        return Buffer.concat([Buffer.from("DDN1"), length, json, body]);
      };
      const f32 = (values: ArrayLike<number>) => {
        const b = Buffer.alloc(values.length * 4);
        for (let i = 0; i < values.length; i++) b.writeFloatLE(values[i]!, i * 4);
        return b;
      };
      const body = f32(features[0]!);
      const h = (id: string, o: Record<string, unknown> = {}) => fuzz.header(id, o);

      // Frames whose id and replyTo can be read: each must get exactly this error code.
      const answerable: [string, string, Buffer][] = [
        ["no-body", "bad_frame", frame(h("no-body"))],
        ["short-body", "bad_frame", frame(h("short-body"), body.subarray(0, 10))],
        ["long-body", "bad_frame", frame(h("long-body"), Buffer.concat([body, body]))],
        [
          "wrong-shape",
          "bad_frame",
          frame(h("wrong-shape", { shape: [1, F + 1] }), f32(new Float32Array(F + 1))),
        ],
        [
          "batch-2",
          "bad_frame",
          frame(h("batch-2", { shape: [2, F] }), Buffer.concat([body, body])),
        ],
        ["flat-shape", "bad_frame", frame(h("flat-shape", { shape: [F] }), body)],
        ["dtype-f64", "bad_frame", frame(h("dtype-f64", { dtype: "f64" }), body)],
        ["dtype-f16-f32-body", "bad_frame", frame(h("dtype-f16-f32-body", { dtype: "f16" }), body)],
        ["u8q-no-scale", "bad_frame", frame(h("u8q-no-scale", { dtype: "u8q" }), Buffer.alloc(F))],
        [
          "deflate-garbage",
          "bad_frame",
          frame(h("deflate-garbage", { compression: "deflate" }), Buffer.from("not zlib at all")),
        ],
        [
          "deflate-bomb",
          "bad_frame",
          frame(h("deflate-bomb", { compression: "deflate" }), deflateSync(Buffer.alloc(8 << 20))),
        ],
        [
          "raw-deflate",
          "bad_frame",
          frame(h("raw-deflate", { compression: "deflate" }), deflateSync(body).subarray(2, -4)),
        ],
        ["gzip", "bad_frame", frame(h("gzip", { compression: "gzip" }), body)],
        ["nan", "bad_frame", frame(h("nan"), f32([Number.NaN, ...features[0]!.slice(1)]))],
        ["wrong-stage", "bad_frame", frame(h("wrong-stage", { stage: 0 }), body)],
        ["kind-result", "bad_frame", frame(h("kind-result", { kind: "result" }), body)],
        ["no-digest", "bad_frame", frame(h("no-digest", { digest: undefined }), body)],
        ["deadline-string", "bad_frame", frame(h("deadline-string", { deadline: "soon" }), body)],
        // The reply carries the request's timings on: a bad one would make the reply undecodable.
        ["timings-string", "bad_frame", frame(h("timings-string", { timings: { x: "y" } }), body)],
        ["timings-array", "bad_frame", frame(h("timings-array", { timings: [1, 2] }), body)],
        [
          "unknown-model",
          "unknown_model",
          frame(h("unknown-model", { model: "default/other" }), body),
        ],
        [
          "digest-mismatch",
          "digest_mismatch",
          frame(h("digest-mismatch", { digest: "a".repeat(64) }), body),
        ],
        ["expired", "deadline_exceeded", frame(h("expired", { deadline: Date.now() - 1 }), body)],
        [
          "deadline-seconds",
          "deadline_exceeded",
          frame(h("deadline-seconds", { deadline: Math.floor(Date.now() / 1000) + 5 }), body),
        ],
        ["oversized", "bad_frame", frame(h("oversized"), Buffer.alloc(maxFrameBytes))],
      ];
      // Frames nobody can answer: dropped, and counted.
      let seed = 12345;
      const random = (n: number) =>
        Buffer.from(
          Uint8Array.from({ length: n }, (_, i) => {
            seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
            return i === 0 ? 0x7f : seed >>> 24;
          }),
        );
      const prefix = (length: number) => {
        const b = Buffer.alloc(8);
        b.write("DDN1");
        b.writeUInt32LE(length, 4);
        return b;
      };
      const { id: _id, ...noId } = h("x");
      const { replyTo: _r, ...noReplyTo } = h("no-reply-to");
      const unanswerable: [string, Buffer][] = [
        ["empty", Buffer.alloc(0)],
        ...Array.from(
          { length: 12 },
          (_, i) => [`random-${i}`, random(1 + i * 37)] as [string, Buffer],
        ),
        ["prefix-only-5", Buffer.from("DDN1\x05")],
        ["truncated-header", Buffer.concat([prefix(200), Buffer.from('{"kind":"infer","id":"t')])],
        ["header-over-64k", Buffer.concat([prefix(70_000), Buffer.from("{}")])],
        ["not-json", Buffer.concat([prefix(9), Buffer.from("{not json")])],
        ["json-array", Buffer.concat([prefix(5), Buffer.from("[1,2]")])],
        ["not-utf8", Buffer.concat([prefix(4), Buffer.from([0x7b, 0xff, 0xfe, 0x7d])])],
        ["no-id", frame(noId, body)],
        ["no-reply-to", frame(noReplyTo, body)],
        [
          "wildcard-reply-to",
          frame(h("wildcard", { replyTo: "ddnn/default/faults/reply/#" }), body),
        ],
        ["oversized-unreadable", random(maxFrameBytes + 100)],
        ["wrong-magic", Buffer.concat([Buffer.from("DDN2"), frame(h("magic"), body).subarray(4)])],
        // A reply to these topics would make Mosquitto disconnect the server (MQTT forbids
        // control characters and non-characters in topic names): refused, so dropped.
        ...["\u0000", "\u0001", "\u007f", "\u0085", "\ufdd0", "\uffff", "\ud800"].map(
          (c, i) =>
            [
              `reply-to-bad-char-${i}`,
              frame(h(`bad-char-${i}`, { replyTo: `ddnn/default/faults/reply/x${c}y` }), body),
            ] as [string, Buffer],
        ),
      ];
      // Well-formed requests from the device agents and from another raw client, interleaved.
      const px = pixels(64, 11);
      const full = await reference.infer(px, 64);
      const answers = Promise.all(
        Array.from({ length: 128 }, async (_, i) => {
          await new Promise((r) => setTimeout(r, i));
          return fog.agents[i % 2]!.agent.classify(sample(px, i % 64));
        }),
      );
      const goodIds: string[] = [];
      for (let round = 0; round < 3; round++) {
        for (const [, , payload] of answerable) fuzz.publish(payload);
        for (const [, payload] of unanswerable) fuzz.publish(payload);
        for (let k = 0; k < 10; k++) {
          const id = `good-${round}-${k}`;
          goodIds.push(id);
          good.publish(good.request(id, k));
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      // One valid request with an unknown extra field: extra fields are allowed.
      fuzz.publish(fuzz.request("extra-field", 3, { colour: "blue", sentAt: Date.now() }));
      // Timings of the tiers before are handed on in the reply, beside the server's own.
      fuzz.publish(fuzz.request("timings", 4, { timings: { device: 0.25, edge: 1.5 } }));

      await fuzz.waitAll([...answerable.map(([id]) => id), "extra-field", "timings"]);
      await good.waitAll(goodIds);
      for (const [id, code] of answerable) {
        const got = fuzz.replies.get(id)!;
        expect(got.length, id).toBe(3);
        for (const reply of got)
          expect([id, reply.status, (reply.error as { code: string }).code]).toEqual([
            id,
            "error",
            code,
          ]);
      }
      expect(fuzz.replies.get("extra-field")![0]).toMatchObject({
        status: "ok",
        label: serverAnswer[3]!.label,
      });
      for (const id of ["timings-string", "timings-array"])
        expect((fuzz.replies.get(id)![0]!.error as { message: string }).message).toMatch(/timings/);
      const timed = fuzz.replies.get("timings")![0]!;
      expect(timed).toMatchObject({ status: "ok", label: serverAnswer[4]!.label });
      expect(timed.timings).toMatchObject({ device: 0.25, edge: 1.5 });
      expect((timed.timings as Record<string, number>).server).toBeGreaterThan(0);
      goodIds.forEach((id, n) => {
        const reply = good.replies.get(id)!;
        expect(reply).toHaveLength(1);
        expect([reply[0]!.status, reply[0]!.label]).toEqual(["ok", serverAnswer[n % 10]!.label]);
      });
      // Nothing else came back to the fuzzer: dropped frames got no reply.
      const expectedIds = new Set([...answerable.map(([id]) => id), "extra-field", "timings"]);
      expect([...fuzz.replies.keys()].filter((id) => !expectedIds.has(id))).toEqual([]);
      expect(fuzz.unreadable).toEqual([]);
      const want = 3 * unanswerable.length;
      const until = Date.now() + 5000;
      let dropped = 0;
      while (Date.now() < until) {
        dropped = (await metric(s.port, "ddnn_frames_dropped_total")) - dropped0;
        if (dropped >= want) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(dropped).toBe(want);
      // The devices were served all along.
      const got = await answers;
      expect(got.filter((a) => a.degraded)).toEqual([]);
      expect(got.map((a) => [a.stageIndex, a.label])).toEqual(
        Array.from({ length: 128 }, (_, i) => [full[i % 64]!.stage, full[i % 64]!.label]),
      );
      expect(s.pool.readyWorkers).toBe(2);
      expect(serverDisconnects, "the server lost its broker connection").toBe(0);
      expect(s.client.connected).toBe(true);
    } finally {
      s.client.off("close", onServerClose);
      await fuzz.close();
      await good.close();
      await fog.close();
    }
  });

  it("a full queue answers overloaded instead of growing", async () => {
    const maxQueue = 4;
    const s = await server(mosquitto.url, { workers: 1, maxBatch: 1, maxDelayMs: 0, maxQueue });
    const raw = await RawClient.open(mosquitto.url, "burst");
    let maxQueued = 0;
    const sampler = setInterval(() => {
      maxQueued = Math.max(maxQueued, s.pool.queued);
    }, 0);
    const onMessage = () => {
      maxQueued = Math.max(maxQueued, s.pool.queued);
    };
    s.client.on("message", onMessage);
    try {
      const ids = Array.from({ length: 400 }, (_, i) => `burst-${i}`);
      // One burst: everything in a few TCP segments.
      for (const [i, id] of ids.entries()) raw.publish(raw.request(id, i));
      await raw.waitAll(ids, 15_000);
      const codes = ids.map((id) => {
        const r = raw.replies.get(id)!;
        expect(r, id).toHaveLength(1);
        return r[0]!.status === "ok" ? "ok" : (r[0]!.error as { code: string }).code;
      });
      const overloaded = codes.filter((c) => c === "overloaded").length;
      expect(codes.filter((c) => c !== "ok" && c !== "overloaded")).toEqual([]);
      expect(overloaded).toBeGreaterThan(0);
      expect(codes.filter((c) => c === "ok").length).toBeGreaterThan(0);
      ids.forEach((id, i) => {
        const h = raw.replies.get(id)![0]!;
        if (h.status === "ok") expect(h.label).toBe(serverAnswer[i % features.length]!.label);
      });
      expect(maxQueued).toBeLessThanOrEqual(maxQueue);
      expect(await metric(s.port, "ddnn_requests_total", 'outcome="overloaded"')).toBe(overloaded);
      // Once the burst is over it serves again.
      raw.publish(raw.request("after-burst", 5));
      await raw.waitAll(["after-burst"]);
      expect(raw.replies.get("after-burst")![0]).toMatchObject({
        status: "ok",
        label: serverAnswer[5]!.label,
      });
    } finally {
      clearInterval(sampler);
      s.client.off("message", onMessage);
      await raw.close();
      await s.close();
    }
  });
});
