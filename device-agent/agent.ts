/**
 * The device tier: runs the device stage(s) in process; a confident exit answers at once, anything
 * else is offloaded upstream. When upstream does not answer before the deadline (or the broker is
 * gone) the device answers with its own exit's prediction, marked degraded, and counts why.
 */
import { performance } from "node:perf_hooks";
import type { MqttClient } from "mqtt";
import type { Logger } from "pino";
import type { TierMetrics } from "../core/metrics.js";
import { isForward, type Pipeline } from "../core/pipeline.js";
import { type OffloadClient, OffloadError } from "../core/runtime/offload-client.js";
import { eventsTopic, type ModelRef } from "../core/topics.js";

export interface Answer {
  readonly label: number;
  readonly labelName: string;
  /** Name of the stage whose exit answered. */
  readonly stage: string;
  readonly stageIndex: number;
  /** Tier that answered: device, edge, server. */
  readonly tier: string;
  readonly entropy: number;
  readonly degraded: boolean;
  /** Why the answer is degraded: deadline, broker_unreachable, upstream_error. */
  readonly reason?: string;
  /** Milliseconds: device compute, communication (round trip less upstream compute), upstream compute, total. */
  readonly timings: { device: number; comm: number; upstream: number; total: number };
  /** Bytes of the request frame sent upstream (0 when answered locally). */
  readonly bytesSent: number;
}

export interface AgentOptions {
  readonly pipeline: Pipeline;
  /** Last stage index run on the device. */
  readonly to: number;
  readonly offload: OffloadClient;
  readonly client: MqttClient;
  readonly model: ModelRef;
  readonly deviceId: string;
  readonly deadlineMs: number;
  /** Label indices that raise an alarm event. */
  readonly alarms: ReadonlySet<number>;
  readonly metrics: TierMetrics;
  readonly log: Logger;
}

export class Agent {
  constructor(private readonly o: AgentOptions) {}

  /** Classifies one sample of raw u8 pixels in the bundle's input layout. */
  async classify(pixels: Uint8Array): Promise<Answer> {
    const started = performance.now();
    const deadline = Date.now() + this.o.deadlineMs;
    const { pipeline, metrics } = this.o;
    const stages = pipeline.manifest.stages;
    const [local] = await pipeline.runRange(0, this.o.to, pipeline.inputTensor(pixels, 1));
    if (!local) throw new Error("the device stages returned no result");
    const device = local.stageMs.reduce((a, b) => a + b, 0);
    for (let s = 0; s <= local.stage; s++)
      metrics.stageSeconds.observe(
        { stage: stages[s]?.name ?? String(s) },
        (local.stageMs[s] ?? 0) / 1000,
      );
    // The device's own exit: confident, or the fallback when upstream cannot answer (`reason`).
    const answerLocally = (reason?: string) =>
      this.finish({
        label: local.label,
        stageIndex: local.stage,
        tier: "device",
        entropy: local.entropy,
        degraded: reason !== undefined,
        ...(reason !== undefined ? { reason } : {}),
        timings: { device, comm: 0, upstream: 0, total: performance.now() - started },
        bytesSent: 0,
      });
    if (!isForward(local)) return answerLocally();
    const next = stages[this.o.to + 1]!;
    try {
      const reply = await this.o.offload.offload(
        { index: this.o.to + 1, name: next.name },
        local.forward.features,
        local.forward.dims,
        deadline,
      );
      metrics.offloads.inc({ outcome: "ok" });
      metrics.offloadBytes.inc(reply.bytesSent);
      const h = reply.header;
      const upstream = Object.entries(h.timings)
        .filter(([k]) => !k.endsWith("Queue"))
        .reduce((a, [, v]) => a + v, 0);
      return this.finish({
        label: h.label,
        stageIndex: h.stage,
        tier: typeof h.tier === "string" ? h.tier : (stages[h.stage]?.name ?? "upstream"),
        entropy: h.entropy,
        degraded: false,
        timings: {
          device,
          comm: Math.max(0, reply.roundTripMs - upstream),
          upstream,
          total: performance.now() - started,
        },
        bytesSent: reply.bytesSent,
      });
    } catch (err) {
      const reason = err instanceof OffloadError ? err.reason : "internal";
      metrics.offloads.inc({ outcome: reason });
      metrics.degraded.inc({ reason });
      this.o.log.debug({ reason, message: (err as Error).message }, "answering locally");
      return answerLocally(reason);
    }
  }

  private finish(a: Omit<Answer, "labelName" | "stage">): Answer {
    const { manifest } = this.o.pipeline;
    const answer: Answer = {
      ...a,
      labelName: manifest.labels[a.label] ?? String(a.label),
      stage: manifest.stages[a.stageIndex]?.name ?? String(a.stageIndex),
    };
    // Only the device's own exits: an upstream answer is counted by the tier whose exit gave it.
    if (a.tier === "device") this.o.metrics.exits.inc({ stage: answer.stage });
    if (this.o.alarms.has(a.label) && this.o.client.connected) {
      const event = {
        kind: "alarm",
        device: this.o.deviceId,
        label: answer.label,
        labelName: answer.labelName,
        stage: answer.stage,
        entropy: answer.entropy,
        degraded: answer.degraded,
        at: Date.now(),
      };
      this.o.client.publish(eventsTopic(this.o.model), JSON.stringify(event), { qos: 1 }, () => {});
    }
    return answer;
  }
}
