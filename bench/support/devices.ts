/**
 * Simulated devices for the benchmarks: the device agent's own MQTT connection (connectBroker:
 * TCP_NODELAY, MQTT 3.1.1) and OffloadClient, without the device stage (its features are computed
 * beforehand, so the load generator spends its CPU on the protocol, not on inference).
 */
import { readFile } from "node:fs/promises";
import type { MqttClient } from "mqtt";
import { connectBroker, whenConnected } from "../../core/runtime/mqtt.js";
import { OffloadClient } from "../../core/runtime/offload-client.js";
import { type ModelRef, replyTopic } from "../../core/topics.js";
import type { TensorEncoding } from "../../core/wire/tensor.js";

export interface Device {
  readonly id: string;
  readonly client: MqttClient;
  readonly offload: OffloadClient;
  close(): Promise<void>;
}

export async function startDevice(o: {
  broker: string;
  model: ModelRef;
  digest: string;
  id: string;
  encoding: TensorEncoding;
}): Promise<Device> {
  const client = connectBroker({
    url: o.broker,
    clientId: `bench-${o.id}-${process.pid}-${Math.random().toString(16).slice(2, 8)}`,
  });
  const offload = new OffloadClient({
    client,
    model: o.model,
    digest: o.digest,
    replyTo: replyTopic(o.model, o.id),
    encoding: o.encoding,
    idPrefix: o.id,
  });
  offload.start();
  await whenConnected(client);
  const until = Date.now() + 10_000;
  while (!offload.subscribed) {
    if (Date.now() > until) throw new Error(`device ${o.id} did not subscribe to its reply topic`);
    await new Promise((r) => setTimeout(r, 5));
  }
  return {
    id: o.id,
    client,
    offload,
    async close() {
      offload.failAll("broker_unreachable", "benchmark over");
      await client.endAsync();
    },
  };
}

/** CPU seconds (user + system) a process has used so far, from /proc (Linux); NaN elsewhere. */
export async function cpuSeconds(pid: number | undefined): Promise<number> {
  if (pid === undefined) return Number.NaN;
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime are fields 14 and 15 of stat; `fields` starts at field 3 (state).
    // Clock ticks are 100 per second on Linux (getconf CLK_TCK).
    const ticks = Number(fields[11]) + Number(fields[12]);
    return ticks / 100;
  } catch {
    return Number.NaN;
  }
}
