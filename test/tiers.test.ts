/** The tiers' own interfaces: the agent's HTTP, replay and MQTT inputs and alarms; the server's OIP v2 routes. */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import jpeg from "jpeg-js";
import { connectAsync } from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type EmbeddedBroker, startEmbeddedBroker } from "../cli/broker.js";
import { encodeIdx } from "../core/dataset/idx.js";
import { isForward, Pipeline } from "../core/pipeline.js";
import { makeLogger } from "../core/runtime/tier.js";
import { agentSchema } from "../device-agent/config.js";
import { pixelsToPng } from "../device-agent/image.js";
import { startAgent } from "../device-agent/main.js";
import { type FixtureStage, pseudoPixels, tempDir, writeBundle } from "./support/bundle-fixture.js";
import { type Fog, startFog, waitFor } from "./support/fog.js";

const stages: FixtureStage[] = [
  {
    name: "device",
    inputName: "image",
    inShape: [1, 6, 6],
    featuresName: "features",
    featureSize: 10,
    logitsName: "logits",
    classes: 3,
    seed: 5,
    threshold: 0.3,
  },
  {
    name: "server",
    inputName: "features",
    inShape: [10],
    logitsName: "logits",
    classes: 3,
    seed: 9,
  },
];
const input = { shape: [1, 6, 6], mean: [0.5], std: [0.5] };

function pixels(n: number, seed: number): Uint8Array {
  return pseudoPixels(n, 36, seed);
}

let broker: EmbeddedBroker;
let dir: string;
let reference: Pipeline;
let fog: Fog;
beforeAll(async () => {
  broker = await startEmbeddedBroker();
  dir = writeBundle(stages, { input }).dir;
  reference = await Pipeline.load(dir);
  fog = await startFog({
    bundle: dir,
    broker: broker.url,
    stageNames: ["device", "server"],
    sharedSubscriptions: false,
    dtype: "f32",
    compression: "none",
  });
});
afterAll(async () => {
  await fog?.close();
  await broker?.close();
});

describe("device agent over HTTP", () => {
  const url = () => `http://127.0.0.1:${fog.agents[0]!.port}/v1/infer`;
  const post = (body: Uint8Array, type: string) =>
    fetch(url(), { method: "POST", headers: { "content-type": type }, body });

  it("answers PNG, JPEG and raw pixels like the in-process pipeline", async () => {
    const px = pixels(20, 3);
    const expected = await reference.infer(px, 20);
    for (let i = 0; i < 20; i++) {
      const sample = px.subarray(i * 36, (i + 1) * 36);
      for (const [body, type] of [
        [sample, "application/octet-stream"],
        [pixelsToPng(sample, [1, 6, 6]), "image/png"],
      ] as const) {
        const res = await post(body, type);
        expect(res.status).toBe(200);
        const a = (await res.json()) as {
          label: number;
          stage: string;
          tier: string;
          labelName: string;
          degraded: boolean;
          timings: Record<string, number>;
        };
        expect(a.label).toBe(expected[i]!.label);
        expect(a.stage).toBe(["device", "server"][expected[i]!.stage]);
        expect(a.tier).toBe(["device", "server"][expected[i]!.stage]);
        expect(a.labelName).toBe(`class-${a.label}`);
        expect(a.degraded).toBe(false);
        expect(Object.keys(a.timings)).toEqual(["device", "comm", "upstream", "total"]);
      }
    }
    // JPEG is lossy, so the reference is what this JPEG decodes to (jpeg-js), made grey with the
    // BT.601 weights: the agent must give the same answer as the pipeline on exactly those pixels.
    for (let i = 0; i < 5; i++) {
      const rgba = Uint8Array.from({ length: 36 * 4 }, (_, j) =>
        j % 4 === 3 ? 255 : px[i * 36 + (j >> 2)]! ^ ((j % 4) * 40),
      );
      const encoded = new Uint8Array(jpeg.encode({ data: rgba, width: 6, height: 6 }, 90).data);
      const decoded = jpeg.decode(encoded, { useTArray: true });
      const grey = Uint8Array.from({ length: 36 }, (_, j) =>
        Math.round(
          0.299 * decoded.data[j * 4]! +
            0.587 * decoded.data[j * 4 + 1]! +
            0.114 * decoded.data[j * 4 + 2]!,
        ),
      );
      const [want] = await reference.infer(grey, 1);
      const res = await post(encoded, "image/jpeg");
      expect(res.status).toBe(200);
      const a = (await res.json()) as { label: number; stage: string; entropy: number };
      expect([a.label, a.stage]).toEqual([want!.label, ["device", "server"][want!.stage]]);
      expect(a.entropy).toBeCloseTo(want!.entropy, 5);
    }
  });

  it("refuses a body that is not an image nor the right number of pixels", async () => {
    const res = await post(new Uint8Array(7), "application/octet-stream");
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: string }).error).toMatch(
      /neither PNG nor JPEG.*7 bytes; the model takes 36/,
    );
    const broken = await post(
      Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 1, 2, 3),
      "image/png",
    );
    expect(broken.status).toBe(400);
    expect(((await broken.json()) as { error: string }).error).toMatch(/PNG image is truncated/);
  });

  it("refuses a PNG that announces more pixels than it may decode", async () => {
    const png = pixelsToPng(new Uint8Array(36), [1, 6, 6]);
    const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
    view.setUint32(16, 40_000, false);
    view.setUint32(20, 40_000, false);
    const res = await post(png, "image/png");
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: string }).error).toMatch(
      /40000x40000 pixels is refused/,
    );
  });

  it("serves health, readiness and metrics that count exactly the requests served", async () => {
    const base = `http://127.0.0.1:${fog.agents[0]!.port}`;
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    const labels = 'tier="device",model="default/fixture"';
    const read = async () => {
      const text = await (await fetch(`${base}/metrics`)).text();
      const value = (name: string) =>
        Number(new RegExp(`^${name} (\\d+)$`, "m").exec(text)?.[1] ?? Number.NaN);
      return {
        deviceExits: value(`ddnn_exits_total\\{stage="device",${labels}\\}`),
        offloads: value(`ddnn_offloads_total\\{outcome="ok",${labels}\\}`),
      };
    };
    const before = await read();
    const n = 24;
    const px = pixels(n, 21);
    const expected = await reference.infer(px, n);
    for (let i = 0; i < n; i++)
      expect(
        (await post(px.subarray(i * 36, (i + 1) * 36), "application/octet-stream")).status,
      ).toBe(200);
    const after = await read();
    const local = expected.filter((e) => e.stage === 0).length;
    // Both paths were taken, so a metric that counted the wrong path would show.
    expect(local).toBeGreaterThan(0);
    expect(local).toBeLessThan(n);
    expect(after.deviceExits - before.deviceExits).toBe(local);
    expect(after.offloads - before.offloads).toBe(n - local);
  });
});

describe("server over the Open Inference Protocol v2", () => {
  const base = () => `http://127.0.0.1:${fog.server!.port}`;

  it("reports health and model metadata", async () => {
    expect(await (await fetch(`${base()}/v2/health/ready`)).json()).toEqual({ ready: true });
    const meta = (await (await fetch(`${base()}/v2/models/fixture`)).json()) as {
      name: string;
      parameters: { digest: string; stages: string[] };
    };
    expect(meta.name).toBe("fixture");
    expect(meta.parameters.digest).toBe(reference.bundle.digest);
    expect(meta.parameters.stages).toEqual(["device", "server"]);
    expect((await fetch(`${base()}/v2/models/other`)).status).toBe(404);
  });

  it("runs every stage on the server and answers from the last exit", async () => {
    const n = 10;
    const px = pixels(n, 8);
    const full = await reference.evaluateAll(px, n);
    const res = await fetch(`${base()}/v2/models/fixture/infer`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        id: "q1",
        inputs: [{ name: "image", shape: [n, 1, 6, 6], datatype: "UINT8", data: Array.from(px) }],
      }),
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { id: string; outputs: { name: string; data: number[] }[] };
    expect(body.id).toBe("q1");
    const out = Object.fromEntries(body.outputs.map((o) => [o.name, o.data]));
    expect(out.label).toEqual(Array.from(full.labels[1]!));
    expect(out.stage).toEqual(new Array(n).fill(1));
  });

  it("refuses a malformed request with 400 and a message", async () => {
    const res = await fetch(`${base()}/v2/models/fixture/infer`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        inputs: [{ name: "image", shape: [1, 5, 5], datatype: "UINT8", data: [1, 2] }],
      }),
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: string }).error).toMatch(
      /shape \[1, 5, 5\] must be \[N, 1, 6, 6\]/,
    );
  });
});

describe("device agent sources and events", () => {
  it("answers locally, degraded, when no broker is reachable", async () => {
    const agent = await startAgent(
      agentSchema.parse({
        bundle: dir,
        broker: "mqtt://127.0.0.1:1",
        httpHost: "127.0.0.1",
        httpPort: 0,
        stages: ["device"],
        deadlineMs: 200,
      }),
      {},
      makeLogger("fatal", "test"),
    );
    try {
      const px = pixels(30, 4);
      const expected = await reference.runRange(0, 0, reference.inputTensor(px, 30));
      const started = Date.now();
      const answers = await Promise.all(
        Array.from({ length: 30 }, (_, i) =>
          agent.agent.classify(px.subarray(i * 36, (i + 1) * 36)),
        ),
      );
      expect(Date.now() - started).toBeLessThan(1000);
      // Exactly the samples the device's exit is not confident about are degraded; the rest
      // are ordinary device answers.
      const confident = expected.map((e) => !isForward(e));
      expect(confident.some(Boolean)).toBe(true);
      expect(confident.every(Boolean)).toBe(false);
      answers.forEach((a, i) => {
        expect(a.label).toBe((expected[i] as { label: number }).label);
        expect([i, a.degraded, a.reason]).toEqual([
          i,
          !confident[i],
          confident[i] ? undefined : "broker_unreachable",
        ]);
      });
      const degraded = confident.filter((c) => !c).length;
      expect(await agent.metrics.registry.getSingleMetricAsString("ddnn_degraded_total")).toMatch(
        new RegExp(`reason="broker_unreachable"[^\\n]* ${degraded}$`, "m"),
      );
    } finally {
      await agent.close();
    }
  });

  it("replays an idx file, takes images from its MQTT input topic, and raises alarms", async () => {
    const n = 12;
    const px = pixels(n, 11);
    const expected = await reference.infer(px, n);
    const tmp = tempDir();
    writeFileSync(join(tmp, "images"), encodeIdx([n, 6, 6], px));
    const alarmLabel = expected[0]!.label;
    const watcher = await connectAsync(broker.url);
    const events: { kind: string; label: number; device: string }[] = [];
    watcher.on("message", (topic, payload) => {
      if (topic.endsWith("/events")) events.push(JSON.parse(payload.toString()));
    });
    await watcher.subscribeAsync("ddnn/default/fixture/events", { qos: 1 });
    const replayed: number[] = [];
    const agent = await startAgent(
      agentSchema.parse({
        bundle: dir,
        broker: broker.url,
        httpHost: "127.0.0.1",
        httpPort: 0,
        deviceId: "replayer",
        source: ["replay", "mqtt"],
        replayImages: join(tmp, "images"),
        fps: 200,
        alarm: [`class-${alarmLabel}`],
        dtype: "f32",
        compression: "none",
        sharedSubscriptions: false,
      }),
      { onReplayAnswer: (a, i) => (replayed[i] = a.label) },
      makeLogger("fatal", "test"),
    );
    try {
      await agent.replayDone;
      // Replay started before the broker connection: early frames may have been answered locally.
      expect(replayed.filter((l) => l !== undefined)).toHaveLength(n);
      await waitFor(() => agent.offload.subscribed, 5000, "agent subscribed");
      const result = new Promise<{ label: number }>((resolve) =>
        watcher.on("message", (topic, payload) => {
          if (topic === "ddnn/default/fixture/input/replayer/result")
            resolve(JSON.parse(payload.toString()));
        }),
      );
      await watcher.subscribeAsync("ddnn/default/fixture/input/replayer/result", { qos: 1 });
      await watcher.publishAsync(
        "ddnn/default/fixture/input/replayer",
        Buffer.from(pixelsToPng(px.subarray(0, 36), [1, 6, 6])),
        { qos: 1 },
      );
      expect((await result).label).toBe(expected[0]!.label);
      await waitFor(() => events.length > 0, 2000, "an alarm event");
      expect(
        events.every(
          (e) => e.kind === "alarm" && e.label === alarmLabel && e.device === "replayer",
        ),
      ).toBe(true);
    } finally {
      await agent.close();
      await watcher.endAsync();
    }
  });
});
