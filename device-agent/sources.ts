/** Input sources of the device agent besides replay: HTTP uploads and an MQTT input topic. */
import type { FastifyPluginAsync } from "fastify";
import type { MqttClient } from "mqtt";
import type { Logger } from "pino";
import type { Manifest } from "../core/bundle/manifest.js";
import { type Agent, captureIdAt } from "./agent.js";
import { ImageError, toInputPixels } from "./image.js";

/** POST /v1/infer with a PNG, a JPEG, or raw u8 pixels in the model's input layout. */
export const inferRoute =
  (agent: Agent, manifest: Manifest, slotMs = 100): FastifyPluginAsync =>
  async (app) => {
    for (const type of ["image/png", "image/jpeg", "application/octet-stream"]) {
      app.addContentTypeParser(type, { parseAs: "buffer" }, (_req, body, done) => done(null, body));
    }
    app.post("/v1/infer", async (req, reply) => {
      const body = req.body;
      if (!Buffer.isBuffer(body) || body.length === 0) {
        return reply.code(400).send({
          error: "send an image (image/png, image/jpeg) or raw pixels (application/octet-stream)",
        });
      }
      let pixels: Uint8Array;
      try {
        pixels = toInputPixels(
          new Uint8Array(body.buffer, body.byteOffset, body.byteLength),
          manifest.input.shape,
        );
      } catch (err) {
        if (err instanceof ImageError) return reply.code(400).send({ error: err.message });
        throw err;
      }
      let capture: string | undefined;
      try {
        // Only a view of a multi-view bundle has captures: a one-view device ignores these.
        capture = agent.view === undefined ? undefined : captureOf(req.query, req.headers, slotMs);
      } catch (err) {
        return reply.code(400).send({ error: (err as Error).message });
      }
      const answer = await agent.classify(pixels, capture);
      return {
        label: answer.label,
        labelName: answer.labelName,
        stage: answer.stage,
        tier: answer.tier,
        entropy: answer.entropy,
        degraded: answer.degraded,
        ...(answer.reason ? { reason: answer.reason } : {}),
        timings: answer.timings,
        ...(answer.capture !== undefined ? { capture: answer.capture } : {}),
        ...(answer.views ? { views: answer.views } : {}),
      };
    });
  };

/**
 * The capture id of an HTTP capture (multi-view bundles): `?capture=ID` or `x-ddnn-capture: ID`
 * as given, else `?captureTime=MS` or `x-ddnn-capture-time: MS` (unix ms, the devices' shared
 * clock) named by its slot; undefined leaves it to the agent (the slot of now).
 */
export function captureOf(
  query: unknown,
  headers: Readonly<Record<string, string | string[] | undefined>>,
  slotMs: number,
): string | undefined {
  const q = (query ?? {}) as Record<string, unknown>;
  const one = (v: unknown) => (Array.isArray(v) ? v[0] : v);
  const id = one(q.capture) ?? one(headers["x-ddnn-capture"]);
  if (typeof id === "string" && id.length > 0) {
    if (id.length > 256) throw new Error("capture id: at most 256 characters");
    return id;
  }
  const time = one(q.captureTime) ?? one(headers["x-ddnn-capture-time"]);
  if (time === undefined) return undefined;
  const ms = Number(time);
  if (!Number.isFinite(ms) || ms < 0)
    throw new Error(`capture time "${String(time)}" is not unix milliseconds`);
  return captureIdAt(ms, slotMs);
}

/**
 * Images published to `topic` (PNG, JPEG or raw pixels) are classified; each answer is published as
 * JSON to `<topic>/result` (QoS 1). For a multi-view bundle, an image published to
 * `<topic>/capture/<id>` belongs to capture `<id>`; one on `topic` itself to the slot of its
 * arrival time. Returns a function that stops listening.
 */
export async function mqttInput(
  agent: Agent,
  client: MqttClient,
  manifest: Manifest,
  topic: string,
  log: Logger,
): Promise<() => Promise<void>> {
  const resultTopic = `${topic}/result`;
  const capturePrefix = `${topic}/capture/`;
  const onMessage = (t: string, payload: Buffer) => {
    const tagged = t.startsWith(capturePrefix) && t.length > capturePrefix.length;
    if (t !== topic && !tagged) return;
    const capture = tagged ? t.slice(capturePrefix.length) : undefined;
    let pixels: Uint8Array;
    try {
      pixels = toInputPixels(
        new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength),
        manifest.input.shape,
      );
    } catch (err) {
      client.publish(resultTopic, JSON.stringify({ error: (err as Error).message }), { qos: 1 });
      return;
    }
    agent.classify(pixels, capture).then(
      (answer) => client.publish(resultTopic, JSON.stringify(answer), { qos: 1 }),
      (err: unknown) => log.error({ err }, "mqtt input failed"),
    );
  };
  client.on("message", onMessage);
  const subscribe = () =>
    client
      .subscribeAsync(agent.view === undefined ? [topic] : [topic, `${capturePrefix}+`], { qos: 1 })
      .catch((err: unknown) => log.warn({ err }, "cannot subscribe to the input topic"));
  if (client.connected) await subscribe();
  client.on("connect", subscribe);
  return async () => {
    client.off("message", onMessage);
    client.off("connect", subscribe);
    if (client.connected)
      await client
        .unsubscribeAsync(agent.view === undefined ? [topic] : [topic, `${capturePrefix}+`])
        .catch(() => {});
  };
}
