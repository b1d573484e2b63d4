/**
 * The device side of the bare MQTT echo (bench/support/echo.ts runs the other side): every call
 * encodes a device request frame with the function OffloadClient uses (`encodeRequestFrame`:
 * features -> dtype -> compression -> header -> frame), publishes it at QoS 1 and waits for the
 * echo to come back, so the echo row pays exactly the device-side encoding the real rows pay.
 * One request in flight at a time.
 */
import { performance } from "node:perf_hooks";
import type { MqttClient } from "mqtt";
import { encodeRequestFrame, type RequestTarget } from "../../core/runtime/offload-client.js";
import { startHelper } from "./helper-process.js";
import { connected, plainClient } from "./plain-mqtt.js";

export interface EchoTiming {
  /** From the call (encoding included) to receipt, ms. */
  readonly callMs: number;
  /** From publish to receipt, ms. */
  readonly rttMs: number;
  readonly bytes: number;
}

export interface EchoClient {
  once(features: Float32Array, dims: readonly number[]): Promise<EchoTiming>;
  close(): Promise<void>;
}

/** A client that publishes on `inTopic` and waits on `outTopic` (the echo's --in and --out). */
export async function startEchoClient(o: {
  broker: string;
  inTopic: string;
  outTopic: string;
  /** Whose frames it sends: model, digest, reply topic and encoding, as the device's. */
  target: RequestTarget;
  /** The stage index written into the frames. */
  stage: number;
}): Promise<EchoClient> {
  const client: MqttClient = plainClient(
    o.broker,
    `bench-echo-client-${process.pid}-${o.outTopic}`,
  );
  await connected(client);
  await client.subscribeAsync(o.outTopic, { qos: 1 });
  let waiting: (() => void) | undefined;
  client.on("message", (topic) => {
    if (topic === o.outTopic) waiting?.();
  });
  let counter = 0;
  return {
    once(features, dims) {
      const called = performance.now();
      const now = Date.now();
      const payload = encodeRequestFrame(
        o.target,
        o.stage,
        `dev-0-0123abcd-${++counter}`,
        features,
        dims,
        { deadline: now + 5_000, sentAt: now },
      );
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error("echo lost a message")), 5_000);
        const published = performance.now();
        waiting = () => {
          clearTimeout(t);
          waiting = undefined;
          const end = performance.now();
          resolve({ callMs: end - called, rttMs: end - published, bytes: payload.length });
        };
        client.publish(o.inTopic, payload, { qos: 1 });
      });
    },
    close: () => client.endAsync(),
  };
}

/**
 * The whole echo: `relays` echo processes (bench/support/echo.ts) chained through the broker
 * (1: two MQTT hops like a request and its reply; 2: three hops, like a request a gateway
 * forwards to the server), and the client that times it. `close` stops them all.
 */
export async function startEcho(o: {
  broker: string;
  /** Topics are bench/<name>/...; one name per echo on a broker. */
  name: string;
  relays: number;
  target: RequestTarget;
  stage: number;
}): Promise<EchoClient> {
  const topics = Array.from({ length: o.relays }, (_, i) => `bench/${o.name}/${i}`);
  topics.push(`bench/${o.name}/reply/${process.pid}`);
  const helpers: { stop(): Promise<void> }[] = [];
  const stopAll = async () => {
    for (const h of helpers.splice(0)) await h.stop();
  };
  try {
    for (let i = 0; i < o.relays; i++)
      helpers.push(
        await startHelper("echo.js", [
          "--broker",
          o.broker,
          "--in",
          topics[i]!,
          "--out",
          topics[i + 1]!,
        ]),
      );
    const client = await startEchoClient({
      broker: o.broker,
      inTopic: topics[0]!,
      outTopic: topics[o.relays]!,
      target: o.target,
      stage: o.stage,
    });
    return {
      once: (features, dims) => client.once(features, dims),
      async close() {
        await client.close();
        await stopAll();
      },
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
