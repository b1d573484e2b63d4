/** Input sources of the device agent besides replay: HTTP uploads and an MQTT input topic. */
import type { FastifyPluginAsync } from "fastify";
import type { MqttClient } from "mqtt";
import type { Logger } from "pino";
import type { Manifest } from "../core/bundle/manifest.js";
import type { Agent } from "./agent.js";
import { ImageError, toInputPixels } from "./image.js";

/** POST /v1/infer with a PNG, a JPEG, or raw u8 pixels in the model's input layout. */
export const inferRoute =
  (agent: Agent, manifest: Manifest): FastifyPluginAsync =>
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
      const answer = await agent.classify(pixels);
      return {
        label: answer.label,
        labelName: answer.labelName,
        stage: answer.stage,
        tier: answer.tier,
        entropy: answer.entropy,
        degraded: answer.degraded,
        ...(answer.reason ? { reason: answer.reason } : {}),
        timings: answer.timings,
      };
    });
  };

/**
 * Images published to `topic` (PNG, JPEG or raw pixels) are classified; each answer is published as
 * JSON to `<topic>/result` (QoS 1). Returns a function that stops listening.
 */
export async function mqttInput(
  agent: Agent,
  client: MqttClient,
  manifest: Manifest,
  topic: string,
  log: Logger,
): Promise<() => Promise<void>> {
  const resultTopic = `${topic}/result`;
  const onMessage = (t: string, payload: Buffer) => {
    if (t !== topic) return;
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
    agent.classify(pixels).then(
      (answer) => client.publish(resultTopic, JSON.stringify(answer), { qos: 1 }),
      (err: unknown) => log.error({ err }, "mqtt input failed"),
    );
  };
  client.on("message", onMessage);
  const subscribe = () =>
    client
      .subscribeAsync(topic, { qos: 1 })
      .catch((err: unknown) => log.warn({ err }, "cannot subscribe to the input topic"));
  if (client.connected) await subscribe();
  client.on("connect", subscribe);
  return async () => {
    client.off("message", onMessage);
    client.off("connect", subscribe);
    if (client.connected) await client.unsubscribeAsync(topic).catch(() => {});
  };
}
