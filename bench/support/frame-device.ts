/**
 * A lean simulated device for load generation: the device agent's MQTT connection settings
 * (connectBroker: MQTT 3.1.1, TCP_NODELAY) sending DDN1 requests whose tensor bodies were encoded
 * once beforehand (by the same encodeTensor the OffloadClient uses), with a fresh id, deadline and
 * sentAt in every header, and matching replies by id from the JSON header alone. What a small C
 * device would do; it keeps the load generator's CPU small on a machine the server shares.
 */
import type { MqttClient } from "mqtt";
import { connectBroker, whenConnected } from "../../core/runtime/mqtt.js";
import { type ModelRef, modelKey, replyTopic, requestTopic } from "../../core/topics.js";
import { encodeFrame } from "../../core/wire/frame.js";
import type { TensorFields } from "../../core/wire/tensor.js";

export interface EncodedRequest {
  readonly fields: TensorFields;
  readonly body: Uint8Array;
}

export interface Answer {
  readonly ok: boolean;
  /** Error code of an error reply. */
  readonly code?: string;
  readonly label?: number;
}

export interface FrameDevice {
  readonly id: string;
  request(r: EncodedRequest, timeoutMs: number): Promise<Answer>;
  close(): Promise<void>;
}

export async function startFrameDevice(o: {
  broker: string;
  model: ModelRef;
  digest: string;
  stage: { index: number; name: string };
  id: string;
}): Promise<FrameDevice> {
  const client: MqttClient = connectBroker({
    url: o.broker,
    clientId: `bench-${o.id}-${process.pid}-${Math.random().toString(16).slice(2, 8)}`,
  });
  const reply = replyTopic(o.model, o.id);
  const topic = requestTopic(o.model, o.stage.name);
  const model = modelKey(o.model);
  const waiting = new Map<string, { resolve(a: Answer): void; timer: NodeJS.Timeout }>();
  let counter = 0;
  client.on("message", (t, payload) => {
    if (t !== reply || payload.length < 8) return;
    const h = payload.readUInt32LE(4);
    let header: { id?: string; status?: string; label?: number; error?: { code?: string } };
    try {
      header = JSON.parse(payload.toString("utf8", 8, 8 + h));
    } catch {
      return;
    }
    const w = header.id !== undefined ? waiting.get(header.id) : undefined;
    if (!w) return;
    waiting.delete(header.id!);
    clearTimeout(w.timer);
    w.resolve(
      header.status === "ok"
        ? { ok: true, ...(header.label !== undefined ? { label: header.label } : {}) }
        : { ok: false, code: header.error?.code ?? "unknown" },
    );
  });
  await whenConnected(client);
  await client.subscribeAsync(reply, { qos: 1 });
  return {
    id: o.id,
    request(r, timeoutMs) {
      const id = `${o.id}-${++counter}`;
      const now = Date.now();
      const frame = encodeFrame(
        {
          kind: "infer",
          id,
          model,
          digest: o.digest,
          stage: o.stage.index,
          replyTo: reply,
          deadline: now + timeoutMs,
          sentAt: now,
          ...r.fields,
        },
        r.body,
      );
      return new Promise<Answer>((resolve) => {
        const timer = setTimeout(() => {
          waiting.delete(id);
          resolve({ ok: false, code: "timeout" });
        }, timeoutMs);
        waiting.set(id, { resolve, timer });
        client.publish(topic, Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength), {
          qos: 1,
        });
      });
    },
    async close() {
      for (const [id, w] of waiting) {
        clearTimeout(w.timer);
        waiting.delete(id);
        w.resolve({ ok: false, code: "closed" });
      }
      await client.endAsync();
    },
  };
}
