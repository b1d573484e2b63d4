/**
 * The device tier: runs the device stage(s) in process; a confident exit answers at once, anything
 * else is offloaded upstream. When upstream does not answer before the deadline (or the broker is
 * gone) the device answers with its own exit's prediction, marked degraded, and counts why.
 */
import { performance } from "node:perf_hooks";
import type { MqttClient } from "mqtt";
import type { Logger } from "pino";
import { argmax, ExitPolicy, normalizedEntropy } from "../core/exit.js";
import type { TierMetrics } from "../core/metrics.js";
import { isForward, type Pipeline } from "../core/pipeline.js";
import {
  type OffloadClient,
  OffloadError,
  type OffloadReply,
} from "../core/runtime/offload-client.js";
import { eventsTopic, type ModelRef } from "../core/topics.js";
import type { ExitAnswer } from "../core/wire/frame.js";
import type { ViewClient } from "./view-client.js";

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
  /** Milliseconds per tier as the upstream reply reported them (compute and queue); absent when answered locally. */
  readonly upstreamTimings?: Readonly<Record<string, number>>;
  /** Probe mode: every exit's answer known for this sample, in stage order (the device's own and upstream's). */
  readonly exits?: readonly ExitAnswer[];
  /**
   * Probe mode: the measurement request sent for a sample the upstream answer did not cover (not
   * traffic: its bytes and time are not in `bytesSent` or `timings`).
   */
  readonly probe?: ProbeMeasurement;
  /** Multi-view bundle: the capture this answer is for, and the views the gateway fused. */
  readonly capture?: string;
  readonly views?: readonly number[];
}

/** What a probe request measured: the upstream path for a sample the device had answered. */
export interface ProbeMeasurement {
  /** Index of the stage whose exit answered the probe (the last when upstream honours probes). */
  readonly stage: number;
  readonly roundTripMs: number;
  readonly bytes: number;
  readonly timings: Readonly<Record<string, number>>;
  /** Set when the probe got no answer (deadline, broker, upstream error). */
  readonly failed?: string;
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
  /**
   * Also learn every exit's answer for every sample (`ddnn profile`, `ddnn up`): the device stages
   * run all their exits, and a sample the upstream answer does not cover (answered here, or at a
   * middle exit) is sent upstream once more as a probe, which is not traffic.
   */
  readonly probe?: boolean;
  /** Device stage compute made this many times slower by busy computation (a slow board). Default 1. */
  readonly deviceSlowdown?: number;
  /**
   * Multi-view bundle: this device's view (the pipeline's stage 0 is that view's file) and the
   * client that sends each capture's view to the fusing gateway. The device never exits alone.
   */
  readonly view?: { readonly index: number; readonly client: ViewClient };
  /** Captures given no id are grouped by capture time in slots this long, ms (default 100). */
  readonly captureSlotMs?: number;
}

/**
 * The capture id of a capture made at `ms` (unix ms, a clock the devices share) when the caller
 * gives none: devices triggered in the same slot name the same capture.
 */
export function captureIdAt(ms: number, slotMs: number): string {
  return `t${Math.floor(ms / slotMs)}`;
}

/** The least a probe request waits for its reply, ms. */
const PROBE_DEADLINE_MS = 10_000;

export class Agent {
  private readonly allExits: ExitPolicy;
  /** The device stages' compute on an idle thread (see calibrate), for --device-slowdown. */
  private stageMs = 0;

  /** What calibrate() measured (or was given), ms; 0 before. */
  get calibratedStageMs(): number {
    return this.stageMs;
  }

  /** Uses a compute time measured before (another run's calibrate()) instead of measuring again. */
  set calibratedStageMs(ms: number) {
    this.stageMs = ms;
  }

  constructor(private readonly o: AgentOptions) {
    // Threshold 0 never exits early: every device stage runs and every exit's answer is seen.
    this.allExits = new ExitPolicy(
      o.pipeline.policy.thresholds.map((t) => (t === undefined ? undefined : 0)),
    );
  }

  /**
   * Measures the device stages' compute once, on an idle thread (median of `runs` sequential runs).
   * The slowdown spins a multiple of this, not of each sample's own time: that one includes waits
   * behind other samples' spins, and would feed on itself under load.
   */
  async calibrate(runs = 31): Promise<number> {
    const { pipeline } = this.o;
    const zeros = new Uint8Array(pipeline.samplePixels);
    const times: number[] = [];
    for (let i = 0; i < runs; i++) {
      const [r] = await pipeline.runRange(
        0,
        this.o.to,
        pipeline.inputTensor(zeros, 1),
        this.allExits,
      );
      times.push(r ? r.stageMs.reduce((a, b) => a + b, 0) : 0);
    }
    times.sort((a, b) => a - b);
    this.stageMs = times[Math.floor(times.length / 2)] ?? 0;
    return this.stageMs;
  }

  /** True when the device is one view of a multi-view bundle. */
  get view(): number | undefined {
    return this.o.view?.index;
  }

  /**
   * Classifies one sample of raw u8 pixels in the bundle's input layout. For a view of a
   * multi-view bundle, `capture` names the scene (default: the capture time's slot, now).
   */
  async classify(pixels: Uint8Array, capture?: string): Promise<Answer> {
    if (this.o.view)
      return this.classifyView(
        pixels,
        capture ?? captureIdAt(Date.now(), this.o.captureSlotMs ?? 100),
        this.o.view.client,
      );
    const started = performance.now();
    const deadline = Date.now() + this.o.deadlineMs;
    const { pipeline, metrics } = this.o;
    const stages = pipeline.manifest.stages;
    const [ran] = await pipeline.runRange(
      0,
      this.o.to,
      pipeline.inputTensor(pixels, 1),
      this.o.probe ? this.allExits : pipeline.policy,
    );
    if (!ran) throw new Error("the device stages returned no result");
    const computed = ran.stageMs.reduce((a, b) => a + b, 0);
    const slowdown = this.o.deviceSlowdown ?? 1;
    // Busy computation, not a sleep: a slow board keeps its CPU busy and its queue growing.
    const spun = slowdown > 1 ? spin(this.stageMs * (slowdown - 1)) : 0;
    const device = computed + spun;
    const local = this.o.probe ? this.ownExit(ran) : { answer: ran, exitsHere: !isForward(ran) };
    const deviceExits = ran.exits ?? [];
    for (let s = 0; s <= local.answer.stage; s++)
      metrics.stageSeconds.observe(
        { stage: stages[s]?.name ?? String(s) },
        ((ran.stageMs[s] ?? 0) * slowdown) / 1000,
      );
    // The device's own exit: confident, or the fallback when upstream cannot answer (`reason`).
    const answerLocally = (reason?: string): Omit<Answer, "labelName" | "stage"> => ({
      label: local.answer.label,
      stageIndex: local.answer.stage,
      tier: "device",
      entropy: local.answer.entropy,
      degraded: reason !== undefined,
      ...(reason !== undefined ? { reason } : {}),
      timings: { device, comm: 0, upstream: 0, total: performance.now() - started },
      bytesSent: 0,
    });
    const next = stages[this.o.to + 1];
    const forward = isForward(ran) ? ran.forward : undefined;
    if (local.exitsHere || !forward || !next)
      return this.probed(answerLocally(), deviceExits, forward);
    let answer: Omit<Answer, "labelName" | "stage">;
    let upstreamExits: readonly ExitAnswer[] = [];
    try {
      const reply = await this.o.offload.offload(
        { index: this.o.to + 1, name: next.name },
        forward.features,
        forward.dims,
        deadline,
      );
      upstreamExits = repliedExits(reply);
      answer = this.upstreamAnswer(
        reply,
        next.name,
        device,
        started,
        stages[reply.header.stage]?.name,
      );
    } catch (err) {
      const reason = err instanceof OffloadError ? err.reason : "internal";
      metrics.offloads.inc({ outcome: reason });
      metrics.degraded.inc({ reason });
      this.o.log.debug({ reason, message: (err as Error).message }, "answering locally");
      answer = answerLocally(reason);
    }
    return this.probed(answer, [...deviceExits, ...upstreamExits], forward);
  }

  /**
   * One view of a capture: the view's device stage, then its exit logits and features in one
   * frame to the gateway, whose fused answer is the capture's. Without an answer before the
   * deadline the device answers with its own view's exit, degraded.
   */
  private async classifyView(
    pixels: Uint8Array,
    capture: string,
    client: ViewClient,
  ): Promise<Answer> {
    const started = performance.now();
    const deadline = Date.now() + this.o.deadlineMs;
    const { pipeline, metrics } = this.o;
    const out = await pipeline.runStage(0, pipeline.inputTensor(pixels, 1));
    const slowdown = this.o.deviceSlowdown ?? 1;
    const spun = slowdown > 1 ? spin(this.stageMs * (slowdown - 1)) : 0;
    const device = out.ms + spun;
    const stage0 = pipeline.manifest.stages[0]!.name;
    metrics.stageSeconds.observe({ stage: stage0 }, (out.ms * slowdown) / 1000);
    const classes = pipeline.classes;
    const own = {
      label: argmax(out.logits, 0, classes),
      entropy: normalizedEntropy(out.logits, 0, classes),
    };
    try {
      const reply = await client.send({
        capture,
        logits: out.logits,
        // A one-stage bundle has only the logits to fuse: the body is empty.
        features: (out.features?.data as Float32Array | undefined) ?? new Float32Array(0),
        dims: out.features?.dims ?? [1, 0],
        deadline,
      });
      const h = reply.header;
      return this.finish({
        ...this.upstreamAnswer(reply, stage0, device, started, undefined),
        ...(h.exits ? { exits: h.exits } : {}),
        capture,
        ...(Array.isArray(h.views) ? { views: h.views as number[] } : {}),
      });
    } catch (err) {
      const reason = err instanceof OffloadError ? err.reason : "internal";
      metrics.offloads.inc({ outcome: reason });
      metrics.degraded.inc({ reason });
      this.o.log.debug({ reason, message: (err as Error).message, capture }, "answering alone");
      return this.finish({
        ...own,
        stageIndex: 0,
        tier: "device",
        degraded: true,
        reason,
        timings: { device, comm: 0, upstream: 0, total: performance.now() - started },
        bytesSent: 0,
        capture,
        views: [this.o.view!.index],
      });
    }
  }

  /**
   * The answer an upstream reply gives, counted as an ok offload of `stage` (the stage it was sent
   * to, or stage 0 of a view): the reply's exit, with the device's time, the round trip less the
   * upstream compute, and the total since `started`. Its tier is the reply's, else `stageName`
   * (the name of the stage that answered), else "upstream".
   */
  private upstreamAnswer(
    reply: OffloadReply,
    stage: string,
    device: number,
    started: number,
    stageName: string | undefined,
  ): Omit<Answer, "labelName" | "stage"> {
    const { metrics } = this.o;
    metrics.offloads.inc({ outcome: "ok" });
    metrics.offloadBytes.inc(reply.bytesSent);
    metrics.offloadSeconds.observe({ stage }, reply.roundTripMs / 1000);
    const h = reply.header;
    const upstream = upstreamCompute(h.timings);
    return {
      label: h.label,
      stageIndex: h.stage,
      tier: typeof h.tier === "string" ? h.tier : (stageName ?? "upstream"),
      entropy: h.entropy,
      degraded: false,
      timings: {
        device,
        comm: Math.max(0, reply.roundTripMs - upstream),
        upstream,
        total: performance.now() - started,
      },
      bytesSent: reply.bytesSent,
      upstreamTimings: h.timings,
    };
  }

  /** The device's own decision from every exit it ran: the first confident one, else its last. */
  private ownExit(ran: {
    stage: number;
    label: number;
    entropy: number;
    exits?: readonly ExitAnswer[];
  }): {
    answer: ExitAnswer;
    exitsHere: boolean;
  } {
    const confident = ran.exits?.find((e) => this.o.pipeline.policy.exits(e.stage, e.entropy));
    if (confident) return { answer: confident, exitsHere: true };
    return {
      answer: { stage: ran.stage, label: ran.label, entropy: ran.entropy },
      exitsHere: false,
    };
  }

  /**
   * Finishes an answer; in probe mode first completes its exits with a probe request when some
   * exit's answer is not known yet (answered on the device, at a middle exit, or by the last stage
   * past a middle exit that an ordinary reply does not report).
   */
  private async probed(
    answer: Omit<Answer, "labelName" | "stage">,
    known: readonly ExitAnswer[],
    forward: { features: Float32Array; dims: readonly number[] } | undefined,
  ): Promise<Answer> {
    if (!this.o.probe) return this.finish(answer);
    const stages = this.o.pipeline.manifest.stages;
    const last = stages.length - 1;
    let exits = byStage(known);
    let probe: ProbeMeasurement | undefined;
    const next = stages[this.o.to + 1];
    if (forward && next && exits.length < last + 1) {
      try {
        const reply = await this.o.offload.offload(
          { index: this.o.to + 1, name: next.name },
          forward.features,
          forward.dims,
          // A measurement, not an answer anyone waits for: late is still useful, lost is not.
          Date.now() + Math.max(this.o.deadlineMs, PROBE_DEADLINE_MS),
          { probe: true },
        );
        exits = byStage([...exits, ...repliedExits(reply)]);
        probe = {
          stage: reply.header.stage,
          roundTripMs: reply.roundTripMs,
          bytes: reply.bytesSent,
          timings: reply.header.timings,
        };
      } catch (err) {
        probe = {
          stage: -1,
          roundTripMs: Number.NaN,
          bytes: 0,
          timings: {},
          failed: err instanceof OffloadError ? err.reason : "internal",
        };
      }
    }
    return this.finish({ ...answer, exits, ...(probe ? { probe } : {}) });
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
    this.o.metrics.requestSeconds.observe(a.timings.total / 1000);
    // A view's alarm is the capture's: the fusing gateway publishes one per capture.
    if (!this.o.view && this.o.alarms.has(a.label) && this.o.client.connected) {
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

/** Upstream compute in a reply's timings: every tier's own entry, not its queue wait. */
export function upstreamCompute(timings: Readonly<Record<string, number>>): number {
  return Object.entries(timings)
    .filter(([k]) => !k.endsWith("Queue"))
    .reduce((a, [, v]) => a + v, 0);
}

/** The exits a reply reports: all of them from a tier that honours probes, else the one that answered. */
function repliedExits(reply: OffloadReply): readonly ExitAnswer[] {
  const h = reply.header;
  return h.exits ?? [{ stage: h.stage, label: h.label, entropy: h.entropy }];
}

function byStage(exits: readonly ExitAnswer[]): ExitAnswer[] {
  const seen = new Map<number, ExitAnswer>();
  for (const e of exits) if (!seen.has(e.stage)) seen.set(e.stage, e);
  return [...seen.values()].sort((a, b) => a.stage - b.stage);
}

/** Keeps this thread computing for `ms` milliseconds; returns the milliseconds it took. */
function spin(ms: number): number {
  const started = performance.now();
  const until = started + ms;
  let x = 0;
  while (performance.now() < until)
    for (let i = 0; i < 1000; i++) x = (x * 1103515245 + 12345) % 2147483648;
  if (x < 0) throw new Error("unreachable");
  return performance.now() - started;
}
