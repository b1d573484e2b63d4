import { EventEmitter } from "node:events";
import type { MqttClient } from "mqtt";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { smallStages, writeBundle } from "../../test/support/bundle-fixture.js";
import { readBundle } from "../bundle/read.js";
import { tierMetrics } from "../metrics.js";
import type { RangeResult } from "../pipeline.js";
import { encodeFrame } from "../wire/frame.js";
import { encodeTensor } from "../wire/tensor.js";
import { StageService } from "./stage-service.js";
import type { Job, JobResult } from "./worker-pool.js";

const TOPIC = "ddnn/default/fixture/server/req";

/** The parts of an MQTT client the service uses; publishes are recorded, not sent. */
class FakeClient extends EventEmitter {
  connected = true;
  readonly published: { topic: string; header: Record<string, unknown> }[] = [];
  subscribeAsync = async () => [];
  unsubscribeAsync = async () => undefined;
  async publishAsync(topic: string, payload: Buffer) {
    const h = payload.readUInt32LE(4);
    this.published.push({ topic, header: JSON.parse(payload.toString("utf8", 8, 8 + h)) });
    return undefined;
  }
}

/** A pool that holds every job until released, recording who asked. */
class HeldPool {
  readonly held: { job: Job; release(): void }[] = [];
  submit(job: Job): Promise<JobResult> {
    return new Promise((resolve) => {
      const result: RangeResult = { stage: 1, label: 0, entropy: 0, stageMs: [0, 0] };
      this.held.push({ job, release: () => resolve({ result, queueMs: 0, batchSize: 1 }) });
    });
  }
}

async function service(maxInFlightPerClient: number) {
  const dir = writeBundle(smallStages()).dir;
  const bundle = await readBundle(dir);
  const client = new FakeClient();
  const pool = new HeldPool();
  const metrics = tierMetrics("server", "default/fixture");
  const s = new StageService({
    client: client as unknown as MqttClient,
    bundle,
    model: { namespace: "default", name: "fixture" },
    pool,
    from: 1,
    to: 1,
    sampleShape: [6],
    tier: "server",
    forward: { dtype: "f32", compression: "none" },
    sharedSubscription: false,
    maxFrameBytes: 1 << 20,
    maxInFlightPerClient,
    metrics,
    log: pino({ level: "silent" }),
  });
  s.start();
  const frame = (device: string, n: number, body?: Uint8Array) => {
    const t = encodeTensor(new Float32Array(6).fill(n / 10), [1, 6], {
      dtype: "f32",
      compression: "none",
    });
    return Buffer.from(
      encodeFrame(
        {
          kind: "infer",
          id: `${device}-${n}`,
          model: "default/fixture",
          digest: bundle.digest,
          stage: 1,
          replyTo: `ddnn/default/fixture/reply/${device}`,
          ...t.fields,
        },
        body ?? t.body,
      ),
    );
  };
  const deliver = async (payload: Buffer) => {
    client.emit("message", TOPIC, payload);
    // The service handles what arrived on the next turn of the event loop.
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
  };
  const replies = (device: string) =>
    client.published
      .filter((p) => p.topic.endsWith(`/reply/${device}`))
      .map((p) => p.header as { id: string; status: string; error?: { message: string } });
  const refusals = async (reason: string) => {
    const text = await metrics.registry.metrics();
    const line = text
      .split("\n")
      .find((l) => l.startsWith("ddnn_refusals_total{") && l.includes(`reason="${reason}"`));
    return Number(line?.slice(line.lastIndexOf(" ") + 1));
  };
  return { s, pool, frame, deliver, replies, refusals };
}

describe("StageService's per-client limit", () => {
  it("answers a client over its limit overloaded while another client is served, and counts it", async () => {
    const { pool, frame, deliver, replies, refusals } = await service(2);
    for (let n = 0; n < 5; n++) await deliver(frame("flood", n));
    await deliver(frame("cam", 0));
    // Two of the flooder's and the camera's reached the pool, each with its client.
    expect(pool.held.map((h) => h.job.client)).toEqual([
      "ddnn/default/fixture/reply/flood",
      "ddnn/default/fixture/reply/flood",
      "ddnn/default/fixture/reply/cam",
    ]);
    const refused = replies("flood");
    expect(refused.map((r) => [r.id, r.status])).toEqual([
      ["flood-2", "error"],
      ["flood-3", "error"],
      ["flood-4", "error"],
    ]);
    expect(refused[0]).toMatchObject({
      error: {
        code: "overloaded",
        message:
          "this client already has 2 requests in flight, the per-client limit (max-in-flight-per-client)",
      },
    });
    expect(replies("cam")).toEqual([]);
    expect(await refusals("client_limit")).toBe(3);
    expect(await refusals("queue_full")).toBe(0);
    // An answer frees a place: the flooder's next request is taken again.
    pool.held[0]!.release();
    await new Promise((r) => setImmediate(r));
    await deliver(frame("flood", 5));
    expect(pool.held).toHaveLength(4);
    expect(replies("flood").map((r) => [r.id, r.status])).toContainEqual(["flood-0", "ok"]);
  });

  it("refuses before the body is decoded, and 0 means no limit", async () => {
    const limited = await service(1);
    await limited.deliver(limited.frame("flood", 0));
    // A body that does not decode: over the limit it is overloaded, not bad_frame.
    await limited.deliver(limited.frame("flood", 1, new Uint8Array(3)));
    expect(limited.replies("flood")[0]).toMatchObject({
      id: "flood-1",
      error: { code: "overloaded" },
    });
    const open = await service(0);
    for (let n = 0; n < 50; n++) await open.deliver(open.frame("flood", n));
    expect(open.pool.held).toHaveLength(50);
    expect(open.replies("flood")).toEqual([]);
  });
});
