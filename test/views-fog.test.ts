/**
 * The horizontal DDNN through a real Mosquitto: three device agents replay their views of the
 * shipped fashion-views3 evaluation sample, the gateway fuses them, the server finishes what the
 * local aggregate does not answer. The distributed run is checked against the in-process
 * multi-view pipeline (core/views-pipeline.ts), capture by capture.
 */
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { MqttClient } from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { shippedViews, viewsSample } from "../cli/paths.js";
import { readIdx } from "../core/dataset/idx.js";
import { adaptiveDecisions } from "../core/evaluation.js";
import { connectBroker, whenConnected } from "../core/runtime/mqtt.js";
import { makeLogger } from "../core/runtime/tier.js";
import {
  eventsTopic,
  modelKey,
  parseModelRef,
  replyTopic,
  requestTopic,
  viewsTopic,
} from "../core/topics.js";
import { ViewsPipeline } from "../core/views-pipeline.js";
import { decodeFrame, decodeResult, encodeFrame, type ResultHeader } from "../core/wire/frame.js";
import type { Answer } from "../device-agent/agent.js";
import { agentSchema } from "../device-agent/config.js";
import { type RunningAgent, startAgent } from "../device-agent/main.js";
import { ViewClient } from "../device-agent/view-client.js";
import { gatewaySchema, type RunningGateway, startGateway } from "../gateway/gateway.js";
import { serverSchema } from "../server/config.js";
import { type RunningServer, startServer } from "../server/server.js";
import { waitFor } from "./support/fog.js";
import { type Mosquitto, startMosquitto } from "./support/mosquitto.js";
import { ddnn, root } from "./support/run.js";

const N = 300;
const K = 3;
const bundle = shippedViews();
const sample = viewsSample(bundle, K)!;
const quiet = () => makeLogger(process.env.DDNN_TEST_LOG ?? "error", "test");

let mosquitto: Mosquitto;
let reference: ViewsPipeline;
let pixels: Uint8Array[];
let truth: Uint8Array;
/** The in-process decisions by the set of views present ("0,1,2", "0,1", ...). */
const expected = new Map<string, { exitStage: Int32Array; label: Int32Array }>();

async function expectedFor(views: readonly number[]) {
  const key = views.join(",");
  let e = expected.get(key);
  if (!e) {
    const full = await reference.evaluateAll(
      pixels.map((p, v) => (views.includes(v) ? p : undefined)),
      N,
    );
    e = adaptiveDecisions(full, reference.policy);
    expected.set(key, e);
  }
  return e;
}

beforeAll(async () => {
  mosquitto = await startMosquitto();
  reference = await ViewsPipeline.load(bundle, { intraOpThreads: 1 });
  const per = reference.samplePixels;
  pixels = (await Promise.all(sample.images.map((p) => readIdx(p)))).map((i) =>
    i.data.subarray(0, N * per),
  );
  truth = (await readIdx(sample.labels)).data.subarray(0, N);
}, 60_000);
afterAll(async () => {
  await reference?.release();
  await mosquitto?.stop();
});

interface Tiers {
  server: RunningServer;
  gateway: RunningGateway;
  close(): Promise<void>;
}

async function startTiers(o: {
  dtype: "f32" | "u8q";
  compression: "none" | "deflate";
  windowMs: number;
  alarm?: string[];
}): Promise<Tiers> {
  const common = {
    bundle,
    broker: mosquitto.url,
    httpHost: "127.0.0.1",
    httpPort: 0,
    dtype: o.dtype,
    compression: o.compression,
    logLevel: "error",
  };
  const server = await startServer(
    serverSchema.parse({ ...common, stages: ["server"], workers: 1, maxBatch: 16 }),
    quiet(),
  );
  const gateway = await startGateway(
    gatewaySchema.parse({
      ...common,
      fusionWindowMs: o.windowMs,
      recentCaptures: 64,
      alarm: o.alarm ?? [],
    }),
    quiet(),
  );
  await waitFor(() => server.service.subscribed, 5000, "server subscribed");
  await waitFor(() => gateway.service.subscribed, 5000, "gateway subscribed");
  return {
    server,
    gateway,
    async close() {
      await gateway.close();
      await server.close();
    },
  };
}

/** K devices replaying their views of the first N captures at `fps`, from one shared start. */
async function replayViews(o: {
  dtype: "f32" | "u8q";
  compression: "none" | "deflate";
  deadlineMs: number;
  fps: number;
  onAnswer: (view: number, answer: Answer, index: number) => void;
}): Promise<RunningAgent[]> {
  const startAt = Date.now() + 3000;
  return Promise.all(
    Array.from({ length: K }, (_, v) =>
      startAgent(
        agentSchema.parse({
          bundle,
          broker: mosquitto.url,
          httpHost: "127.0.0.1",
          httpPort: 0,
          dtype: o.dtype,
          compression: o.compression,
          logLevel: "error",
          deviceId: `camera-${v}`,
          view: v,
          deadlineMs: o.deadlineMs,
          source: ["replay"],
          replayImages: sample.images[v],
          fps: o.fps,
        }),
        {
          replayIndices: Array.from({ length: N }, (_, i) => i),
          replayWaitForUpstreamMs: 10_000,
          replayStartAt: startAt,
          onReplayAnswer: (answer, index) => o.onAnswer(v, answer, index),
        },
        quiet(),
      ),
    ),
  );
}

describe("the horizontal DDNN through Mosquitto", () => {
  it("f32 frames: every capture gets the in-process pipeline's exit and label, on every device; u8q+deflate agrees for >= 99%", async () => {
    const want = await expectedFor([0, 1, 2]);
    for (const [dtype, compression] of [
      ["f32", "none"],
      ["u8q", "deflate"],
    ] as const) {
      const tiers = await startTiers({ dtype, compression, windowMs: 400 });
      const answers: { view: number; index: number; answer: Answer }[] = [];
      try {
        const agents = await replayViews({
          dtype,
          compression,
          deadlineMs: 4000,
          fps: 60,
          onAnswer: (view, answer, index) => answers.push({ view, index, answer }),
        });
        try {
          await Promise.all(agents.map((a) => a.replayDone));
        } finally {
          await Promise.all(agents.map((a) => a.close()));
        }
      } finally {
        await tiers.close();
      }
      expect(answers.length).toBe(K * N);
      expect(answers.filter((a) => a.answer.degraded)).toEqual([]);
      const agree = answers.filter(
        (a) =>
          a.answer.stageIndex === want.exitStage[a.index] && a.answer.label === want.label[a.index],
      ).length;
      const complete = answers.filter((a) => a.answer.views?.join(",") === "0,1,2").length;
      const byCapture = new Map<number, Set<string>>();
      for (const a of answers) {
        const s = byCapture.get(a.index) ?? new Set();
        s.add(`${a.answer.stageIndex}/${a.answer.label}`);
        byCapture.set(a.index, s);
      }
      console.log(
        `views ${dtype}+${compression}: ${agree}/${answers.length} answers agree with the in-process pipeline, ${complete} fused from all ${K} views`,
      );
      // Every device of a capture gets the same answer: the capture's.
      expect([...byCapture.values()].every((s) => s.size === 1)).toBe(true);
      if (dtype === "f32") {
        expect(complete).toBe(K * N);
        expect(agree).toBe(K * N);
      } else {
        expect(agree / answers.length).toBeGreaterThanOrEqual(0.99);
      }
    }
  }, 240_000);

  it("with one device stopped mid-run every capture is answered within its deadline, as the in-process pipeline answers without that view", async () => {
    const deadlineMs = 2000;
    const tiers = await startTiers({ dtype: "f32", compression: "none", windowMs: 250 });
    const answers: { view: number; index: number; answer: Answer }[] = [];
    try {
      const agents = await replayViews({
        dtype: "f32",
        compression: "none",
        deadlineMs,
        fps: 60,
        onAnswer: (view, answer, index) => answers.push({ view, index, answer }),
      });
      try {
        await waitFor(
          () => answers.filter((a) => a.view === 0).length >= N / 3,
          60_000,
          "a third of the captures answered",
        );
        await agents[2]!.close();
        await Promise.all(agents.slice(0, 2).map((a) => a.replayDone));
      } finally {
        await Promise.all(agents.map((a) => a.close()));
      }
    } finally {
      await tiers.close();
    }
    const first = answers.filter((a) => a.view === 0);
    expect(first.length).toBe(N);
    expect(answers.filter((a) => a.view !== 2 && a.answer.degraded)).toEqual([]);
    expect(first.every((a) => a.answer.timings.total <= deadlineMs)).toBe(true);
    const without2 = first.filter((a) => a.answer.views?.join(",") === "0,1");
    expect(without2.length).toBeGreaterThan(N / 3);
    let agree = 0;
    let correct = 0;
    let correctInProcess = 0;
    for (const a of first) {
      const views = a.answer.views ?? [];
      const want = await expectedFor(views);
      if (a.answer.stageIndex === want.exitStage[a.index] && a.answer.label === want.label[a.index])
        agree++;
      if (views.join(",") === "0,1") {
        if (a.answer.label === truth[a.index]) correct++;
        if (want.label[a.index] === truth[a.index]) correctInProcess++;
      }
    }
    const full = await expectedFor([0, 1, 2]);
    const fullCorrect = without2.filter((a) => full.label[a.index] === truth[a.index]).length;
    console.log(
      `views: device 2 stopped after ${N - without2.length} captures; ${without2.length} captures fused from views 0,1: accuracy ${correct}/${without2.length} (in-process without view 2: ${correctInProcess}/${without2.length}; with all views: ${fullCorrect}/${without2.length}); ${agree}/${N} captures agree with the in-process pipeline for their views`,
    );
    expect(agree).toBe(N);
    expect(correct).toBe(correctInProcess);
  }, 240_000);
});

describe("the gateway's fusion, frame by frame", () => {
  let tiers: Tiers;
  let client: MqttClient;
  const model = parseModelRef("default/fashion-views3");
  const replies = new Map<string, ResultHeader>();
  const events: { capture?: string; views?: number[]; label?: number }[] = [];
  const replyTo = replyTopic(model, "probe-client");

  beforeAll(async () => {
    // Every label raises an alarm: one event per capture, whatever its answer.
    tiers = await startTiers({
      dtype: "f32",
      compression: "none",
      windowMs: 150,
      alarm: reference.manifest.labels.map((_, i) => String(i)),
    });
    client = connectBroker({ url: mosquitto.url, clientId: `views-test-${process.pid}` });
    await whenConnected(client);
    client.on("message", (topic, payload) => {
      if (topic === eventsTopic(model)) events.push(JSON.parse(payload.toString()));
      if (topic !== replyTo && !topic.startsWith(`${replyTo}/`)) return;
      const { header } = decodeResult(new Uint8Array(payload));
      replies.set(header.id, header);
    });
    await client.subscribeAsync([replyTo, `${replyTo}/+`, eventsTopic(model)], { qos: 1 });
  }, 60_000);
  afterAll(async () => {
    await client?.endAsync();
    await tiers?.close();
  });

  /** View v's real device output for capture sample i. */
  async function viewOf(v: number, i: number) {
    const device = reference.devices[v]!;
    const per = reference.samplePixels;
    const out = await device.runStage(
      0,
      device.inputTensor(pixels[v]!.subarray(i * per, (i + 1) * per), 1),
    );
    return {
      logits: out.logits,
      features: out.features!.data as Float32Array,
      dims: out.features!.dims,
    };
  }

  function clientFor(v: number): ViewClient {
    const c = new ViewClient({
      client,
      model,
      digest: tiers.gateway.bundle.digest,
      view: v,
      replyTo: `${replyTo}/view${v}`,
      encoding: { dtype: "f32", compression: "none" },
      idPrefix: `probe-v${v}`,
    });
    c.start();
    return c;
  }

  it("a view that comes after its capture was answered gets the answer already given", async () => {
    const views = [clientFor(0), clientFor(1), clientFor(2)];
    await waitFor(() => views.every((c) => c.subscribed), 5000, "view clients subscribed");
    const i = 7;
    const deadline = () => Date.now() + 5000;
    const [a0, a1] = await Promise.all(
      [0, 1].map(async (v) =>
        views[v]!.send({ capture: "late-7", ...(await viewOf(v, i)), deadline: deadline() }),
      ),
    );
    expect(a0!.header.views).toEqual([0, 1]);
    const late = await views[2]!.send({
      capture: "late-7",
      ...(await viewOf(2, i)),
      deadline: deadline(),
    });
    const want = await expectedFor([0, 1]);
    for (const a of [a0!, a1!, late]) {
      expect(a.header.stage).toBe(want.exitStage[i]);
      expect(a.header.label).toBe(want.label[i]);
      expect(a.header.views).toEqual([0, 1]);
    }
    const metrics =
      await tiers.gateway.metrics.registry.getSingleMetricAsString("ddnn_late_views_total");
    expect(metrics).toMatch(/ddnn_late_views_total\{[^}]*\} 1$/m);
  });

  it("a malformed or wrong-view frame gets an error reply, an unreadable one is dropped, and the gateway keeps serving", async () => {
    const topic = viewsTopic(model);
    const v0 = await viewOf(0, 3);
    const base = {
      kind: "infer",
      model: modelKey(model),
      digest: tiers.gateway.bundle.digest,
      stage: 1,
      replyTo,
      deadline: Date.now() + 5000,
      capture: "bad-1",
      logits: Array.from(v0.logits),
      dtype: "f32",
      shape: [...v0.dims],
    };
    const body = new Uint8Array(v0.features.buffer, v0.features.byteOffset, v0.features.byteLength);
    const cases: [string, object, Uint8Array, string, RegExp][] = [
      [
        "wrong-view",
        { ...base, id: "bad-view", view: 5 },
        body,
        "bad_frame",
        /view 5 is not a view/,
      ],
      [
        "no-capture",
        { ...base, id: "bad-capture", view: 0, capture: undefined },
        body,
        "bad_frame",
        /capture, view and logits/,
      ],
      [
        "short-logits",
        { ...base, id: "bad-logits", view: 1, logits: [1, 2] },
        body,
        "bad_frame",
        /logits has 2 values/,
      ],
      [
        "digest",
        { ...base, id: "bad-digest", view: 0, digest: "0".repeat(64) },
        body,
        "digest_mismatch",
        /bundle/,
      ],
      ["body", { ...base, id: "bad-body", view: 2 }, body.subarray(0, 17), "bad_frame", /./],
    ];
    for (const [, header, b] of cases)
      await client.publishAsync(topic, Buffer.from(encodeFrame(header, b)), { qos: 1 });
    await client.publishAsync(topic, Buffer.from("not a frame at all"), { qos: 1 });
    await waitFor(
      () => cases.every(([, h]) => replies.has((h as { id: string }).id)),
      10_000,
      "error replies",
    );
    for (const [name, header, , code, message] of cases) {
      const r = replies.get((header as { id: string }).id)!;
      expect(r.status, name).toBe("error");
      if (r.status === "error") {
        expect(r.error.code, name).toBe(code);
        expect(r.error.message, name).toMatch(message);
      }
    }
    // Still serving: a whole capture is fused and answered.
    const views = [clientFor(0), clientFor(1), clientFor(2)];
    await waitFor(() => views.every((c) => c.subscribed), 5000, "view clients subscribed");
    const got = await Promise.all(
      [0, 1, 2].map(async (v) =>
        views[v]!.send({
          capture: "after-bad",
          ...(await viewOf(v, 11)),
          deadline: Date.now() + 5000,
        }),
      ),
    );
    const want = await expectedFor([0, 1, 2]);
    for (const a of got) {
      expect(a.header.views).toEqual([0, 1, 2]);
      expect(a.header.label).toBe(want.label[11]);
      expect(a.header.stage).toBe(want.exitStage[11]);
    }
    // One alarm event per capture, from the gateway, not one per device.
    await waitFor(() => events.some((e) => e.capture === "after-bad"), 5000, "the alarm event");
    await sleep(200);
    const alarms = events.filter((e) => e.capture === "after-bad");
    expect(alarms).toHaveLength(1);
    expect(alarms[0]!.views).toEqual([0, 1, 2]);
    expect(alarms[0]!.label).toBe(want.label[11]);
    const text = await tiers.gateway.metrics.registry.metrics();
    const value = (re: RegExp) => Number(text.match(re)?.[1] ?? Number.NaN);
    // late-7 (views 0, 1 at the window's close) and after-bad (all three); bad-1 never opened.
    expect(value(/^ddnn_captures_fused_total\{[^}]*outcome="partial"[^}]*\} (\d+)$/m)).toBe(1);
    expect(value(/^ddnn_captures_fused_total\{[^}]*outcome="complete"[^}]*\} (\d+)$/m)).toBe(1);
    // "not a frame at all" has no id to answer: dropped and counted.
    expect(value(/^ddnn_frames_dropped_total\{[^}]*reason="bad_frame"[^}]*\} (\d+)$/m)).toBe(1);
    expect(value(/^ddnn_views_per_capture_sum\{[^}]*\} (\d+)$/m)).toBe(5);
    expect(value(/^ddnn_aggregate_exits_total\{[^}]*\} (\d+)$/m)).toBe(
      [7, 11].filter(
        (i, j) => (j === 0 ? expected.get("0,1") : expected.get("0,1,2"))!.exitStage[i] === 0,
      ).length,
    );
  });
});

describe("ddnn up --views and ddnn eval on the multi-view bundle", () => {
  it("ddnn up --views 3 answers every capture as the in-process pipeline does; ddnn eval --missing-views drops a view", async () => {
    const up = await ddnn([
      "up",
      "--views",
      "3",
      "--limit",
      "90",
      "--fps",
      "30",
      "--dtype",
      "f32",
      "--compression",
      "none",
      "--deadline-ms",
      "3000",
      "--fusion-window-ms",
      "400",
      "--json",
    ]);
    expect(up.code, up.stderr).toBe(0);
    const report = JSON.parse(up.stdout) as {
      captures: number;
      deviceAndServer: {
        agreementWithInProcess: number;
        capturesFusedComplete: number;
        sameAnswerOnEveryDevice: number;
        degraded: number;
      };
      inProcess: { overall: number; singleViewOverall: number[] };
    };
    expect(report.captures).toBe(90);
    expect(report.deviceAndServer).toMatchObject({
      agreementWithInProcess: 1,
      capturesFusedComplete: 90,
      sameAnswerOnEveryDevice: 90,
      degraded: 0,
    });
    expect(report.inProcess.singleViewOverall).toHaveLength(3);

    const all = JSON.parse(
      (await ddnn(["eval", "--bundle", bundle, "--limit", "300", "--json"])).stdout,
    );
    const without = JSON.parse(
      (await ddnn(["eval", "--bundle", bundle, "--limit", "300", "--missing-views", "2", "--json"]))
        .stdout,
    );
    expect(all.views.present).toEqual([0, 1, 2]);
    expect(without.views.present).toEqual([0, 1]);
    const want = await expectedFor([0, 1]);
    const correct = Array.from(want.label).filter((l, i) => l === truth[i]).length;
    expect(without.overall).toBeCloseTo(correct / N, 12);
  }, 240_000);
});

describe("a one-view bundle's requests", () => {
  it("carry exactly the header fields they had before views existed (no capture, view or logits)", async () => {
    const deep = join(root, "models", "fashion-deep");
    const model = parseModelRef("default/fashion-deep");
    const watcher = connectBroker({ url: mosquitto.url, clientId: `k1-watch-${process.pid}` });
    const frames: Record<string, unknown>[] = [];
    try {
      await whenConnected(watcher);
      watcher.on("message", (_t, payload) =>
        frames.push(decodeFrame(new Uint8Array(payload)).header),
      );
      await watcher.subscribeAsync(requestTopic(model, "server"), { qos: 1 });
      const agent = await startAgent(
        agentSchema.parse({
          bundle: deep,
          broker: mosquitto.url,
          httpHost: "127.0.0.1",
          httpPort: 0,
          deviceId: "k1-camera",
          deadlineMs: 300,
          source: ["http"],
          logLevel: "error",
          // Every sample goes upstream: the device exit never answers.
          threshold: { device: 0 },
        }),
        {},
        quiet(),
      );
      try {
        await waitFor(() => agent.offload.subscribed, 5000, "agent subscribed");
        const per = reference.samplePixels;
        await agent.agent.classify(pixels[0]!.subarray(0, per), "ignored-capture");
      } finally {
        await agent.close();
      }
      await waitFor(() => frames.length === 1, 5000, "the request frame");
    } finally {
      await watcher.endAsync();
    }
    expect(Object.keys(frames[0]!)).toEqual([
      "kind",
      "id",
      "model",
      "digest",
      "stage",
      "replyTo",
      "deadline",
      "sentAt",
      "dtype",
      "shape",
      "compression",
      "scale",
      "zero",
    ]);
  });
});
