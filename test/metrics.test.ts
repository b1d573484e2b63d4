/**
 * Every tier's /metrics after a known run, against the run's own counts: each answer counted once
 * over the tiers (by the tier whose exit gave it), batch sizes per batch (MQTT and HTTP), the queue
 * as it is at scrape time, offloads and bytes as the devices saw them, the time per hop (queue,
 * transit) once per request, workers and their busy time, and error answers by code.
 */
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Pipeline } from "../core/pipeline.js";
import { modelKey, parseModelRef, requestTopic } from "../core/topics.js";
import { encodeFrame, errorCodes } from "../core/wire/frame.js";
import { encodeTensor } from "../core/wire/tensor.js";
import { pseudoPixels, threeTierStages, writeBundle } from "./support/bundle-fixture.js";
import { type Fog, startFog, waitFor } from "./support/fog.js";
import { type Mosquitto, startMosquitto } from "./support/mosquitto.js";

const stages = threeTierStages();

/** Parses Prometheus text: metric name with its labels (sorted, without tier/model) -> value. */
async function scrape(port: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = /^(ddnn_[a-z_]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels = (m[2] ?? "")
      .split(",")
      .filter((l) => l !== "" && !l.startsWith("tier=") && !l.startsWith("model="))
      .sort()
      .join(",");
    out.set(labels ? `${m[1]}{${labels}}` : m[1]!, Number(m[3]));
  }
  return out;
}

let mosquitto: Mosquitto;
let fog: Fog;
let reference: Pipeline;
const n = 120;
const px = pseudoPixels(n, 16, 77);
beforeAll(async () => {
  mosquitto = await startMosquitto();
  const dir = writeBundle(stages).dir;
  reference = await Pipeline.load(dir);
  fog = await startFog({
    bundle: dir,
    broker: mosquitto.url,
    stageNames: stages.map((s) => s.name),
    sharedSubscriptions: true,
    devices: 2,
    extra: { fullModel: true },
  });
});
afterAll(async () => {
  await fog?.close();
  await mosquitto?.stop();
});

describe("/metrics of every tier after a known run", () => {
  it("count each answer once, at the tier whose exit gave it, and each batch once", async () => {
    const started = performance.now();
    const expected = await reference.infer(px, n);
    const at = [0, 1, 2].map((s) => expected.filter((e) => e.stage === s).length);
    // Every tier answers some, so a count put at the wrong tier shows.
    expect(at.every((c) => c > 0)).toBe(true);
    const answers = await Promise.all(
      Array.from({ length: n }, (_, i) =>
        fog.agents[i % 2]!.agent.classify(px.subarray(i * 16, (i + 1) * 16)),
      ),
    );
    expect(answers.filter((a) => a.degraded)).toEqual([]);
    expect(answers.map((a) => a.stageIndex)).toEqual(expected.map((e) => e.stage));

    const devices = await Promise.all(fog.agents.map((a) => scrape(a.port)));
    const edge = await scrape(fog.gateway!.port);
    const server = await scrape(fog.server!.port);
    const sum = (name: string) => devices.reduce((t, d) => t + (d.get(name) ?? 0), 0);

    // Exits: the devices count only their own; summed over the tiers, every answer once.
    expect(sum('ddnn_exits_total{stage="device"}')).toBe(at[0]);
    expect(sum('ddnn_exits_total{stage="edge"}')).toBe(0);
    expect(sum('ddnn_exits_total{stage="server"}')).toBe(0);
    expect(edge.get('ddnn_exits_total{stage="edge"}')).toBe(at[1]);
    expect(server.get('ddnn_exits_total{stage="server"}')).toBe(at[2]);

    // Requests by outcome at the edge and server.
    expect(edge.get('ddnn_requests_total{outcome="ok",stage="edge"}')).toBe(at[1]);
    expect(edge.get('ddnn_requests_total{outcome="forwarded",stage="edge"}')).toBe(at[2]);
    expect(server.get('ddnn_requests_total{outcome="ok",stage="server"}')).toBe(at[2]);

    // Offloads as the devices saw them.
    expect(sum('ddnn_offloads_total{outcome="ok"}')).toBe(n - at[0]!);
    expect(sum("ddnn_offload_bytes_total")).toBe(answers.reduce((t, a) => t + a.bytesSent, 0));
    expect(sum("ddnn_degraded_total")).toBe(0);
    // The device's time per answer, once per answer, and its round trip, once per offload.
    expect(sum("ddnn_request_seconds_count")).toBe(n);
    expect(sum('ddnn_offload_seconds_count{stage="edge"}')).toBe(n - at[0]!);
    expect(sum("ddnn_offloads_in_flight")).toBe(0);

    // Batches: one observation per batch, whose sizes add up to the samples the workers ran.
    expect(edge.get("ddnn_batch_size_sum")).toBe(n - at[0]!);
    expect(server.get("ddnn_batch_size_sum")).toBe(at[2]);
    const batches = server.get("ddnn_batch_size_count")!;
    expect(batches).toBeGreaterThan(0);
    expect(batches).toBeLessThanOrEqual(at[2]!);

    // Nothing is waiting once every answer is in: the gauge is read at scrape time.
    expect(edge.get("ddnn_queue_depth")).toBe(0);
    expect(server.get("ddnn_queue_depth")).toBe(0);
    // Per-sample compute of each stage, once per sample that ran it.
    expect(edge.get('ddnn_stage_seconds_count{stage="edge"}')).toBe(n - at[0]!);
    expect(server.get('ddnn_stage_seconds_count{stage="server"}')).toBe(at[2]);

    // Per hop, once per request a tier took: the wait for a worker, and the way from the device.
    expect(edge.get('ddnn_queue_seconds_count{stage="edge"}')).toBe(n - at[0]!);
    expect(server.get('ddnn_queue_seconds_count{stage="server"}')).toBe(at[2]);
    expect(edge.get('ddnn_transit_seconds_count{stage="edge"}')).toBe(n - at[0]!);
    expect(server.get('ddnn_transit_seconds_count{stage="server"}')).toBe(at[2]);
    // A request reaches the server after the edge: its way from the device is longer on average.
    const meanTransit = (m: Map<string, number>, stage: string) =>
      m.get(`ddnn_transit_seconds_sum{stage="${stage}"}`)! /
      m.get(`ddnn_transit_seconds_count{stage="${stage}"}`)!;
    expect(meanTransit(server, "server")).toBeGreaterThanOrEqual(meanTransit(edge, "edge"));

    // Workers: as many as configured (gateway 1, server 2), busy at least as long as the
    // per-sample compute they reported and no longer than the run lasted on all of them.
    expect(edge.get("ddnn_workers")).toBe(1);
    expect(server.get("ddnn_workers")).toBe(2);
    const elapsed = (performance.now() - started) / 1000;
    for (const [tier, stage, workers] of [
      [edge, "edge", 1],
      [server, "server", 2],
    ] as const) {
      const busy = tier.get("ddnn_worker_busy_seconds_total")!;
      expect(busy).toBeGreaterThanOrEqual(tier.get(`ddnn_stage_seconds_sum{stage="${stage}"}`)!);
      expect(busy).toBeLessThanOrEqual(elapsed * workers);
    }
    // Nothing in flight once every answer is in, and no error answered.
    expect(edge.get("ddnn_requests_in_flight")).toBe(0);
    expect(server.get("ddnn_requests_in_flight")).toBe(0);
    // Every error code's series exists from the start, at 0.
    for (const tier of [edge, server]) {
      const errors = [...tier].filter(([k]) => k.startsWith("ddnn_errors_total"));
      expect(errors.map(([, v]) => v)).toEqual(new Array(errorCodes.length).fill(0));
    }
  });

  it("count error answers by code at the tier that answered them, and probes apart from answers", async () => {
    const server = fog.server!;
    const model = parseModelRef(`default/${server.bundle.manifest.name}`);
    const client = await mqtt.connectAsync(mosquitto.url, { protocolVersion: 4, clean: true });
    try {
      const replyTo = "ddnn/default/metrics-test/reply/raw";
      const replies = new Map<string, string>();
      client.on("message", (_topic, payload) => {
        const h = payload.readUInt32LE(4);
        const header = JSON.parse(payload.toString("utf8", 8, 8 + h)) as {
          id: string;
          error?: { code: string };
        };
        replies.set(header.id, header.error?.code ?? "ok");
      });
      await client.subscribeAsync(replyTo, { qos: 1 });
      const before = await scrape(server.port);
      const { fields, body } = encodeTensor(new Float32Array(8), [1, 8], {
        dtype: "f32",
        compression: "none",
      });
      const frame = (id: string, overrides: Record<string, unknown>) =>
        Buffer.from(
          encodeFrame(
            {
              kind: "infer",
              id,
              model: modelKey(model),
              digest: server.bundle.digest,
              stage: 2,
              replyTo,
              deadline: Date.now() + 10_000,
              ...fields,
              ...overrides,
            },
            body,
          ),
        );
      const sent = {
        a: { digest: "0".repeat(64) },
        b: { digest: "1".repeat(64) },
        c: { deadline: Date.now() - 1 },
        // A probe (ddnn profile): answered, but not an answer of the run.
        d: { probe: true },
      };
      for (const [id, overrides] of Object.entries(sent))
        await client.publishAsync(requestTopic(model, "server"), frame(id, overrides), { qos: 1 });
      await waitFor(() => replies.size === 4, 5000, "four replies");
      expect(Object.fromEntries(replies)).toEqual({
        a: "digest_mismatch",
        b: "digest_mismatch",
        c: "deadline_exceeded",
        d: "ok",
      });
      const after = await scrape(server.port);
      const delta = (name: string) => (after.get(name) ?? 0) - (before.get(name) ?? 0);
      expect(delta('ddnn_errors_total{code="digest_mismatch",stage="server"}')).toBe(2);
      expect(delta('ddnn_errors_total{code="deadline_exceeded",stage="server"}')).toBe(1);
      expect(delta('ddnn_requests_total{outcome="digest_mismatch",stage="server"}')).toBe(2);
      expect(delta('ddnn_requests_total{outcome="probe",stage="server"}')).toBe(1);
      expect(delta('ddnn_requests_total{outcome="ok",stage="server"}')).toBe(0);
      // The errors were refused before they reached a worker; only the probe was queued and
      // computed, and it is no exit of the run.
      expect(delta('ddnn_queue_seconds_count{stage="server"}')).toBe(1);
      expect(delta('ddnn_stage_seconds_count{stage="server"}')).toBe(1);
      expect(delta('ddnn_exits_total{stage="server"}')).toBe(0);
    } finally {
      await client.endAsync();
    }
  });

  it("count the batches of an HTTP (Open Inference Protocol) request too", async () => {
    const before = await scrape(fog.server!.port);
    const k = 10;
    const res = await fetch(`http://127.0.0.1:${fog.server!.port}/v2/models/fixture/infer`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        inputs: [
          {
            name: "image",
            shape: [k, 1, 4, 4],
            datatype: "UINT8",
            data: Array.from(px.subarray(0, k * 16)),
          },
        ],
      }),
    });
    expect(res.status).toBe(200);
    const after = await scrape(fog.server!.port);
    const delta = (name: string) => (after.get(name) ?? 0) - (before.get(name) ?? 0);
    expect(delta("ddnn_batch_size_sum")).toBe(k);
    expect(delta('ddnn_requests_total{outcome="ok_http",stage="server"}')).toBe(k);
    // HTTP answers are the Server Only configuration: not counted as exits of the tiered run.
    expect(delta('ddnn_exits_total{stage="server"}')).toBe(0);
  });
});
