/**
 * Table II of the horizontal DDNN (a multi-view bundle, docs/bundle-views.md) from its distributed
 * run: K devices replay their views of every capture, the gateway fuses them. A capture's answer is
 * what view 0's device got (every device of a capture gets the same one; the run counts where not).
 * The run reports the local aggregate's exit for every capture and the later exits for the
 * captures that went on; a probe pass of the same captures with the aggregator's threshold at 0
 * sends every capture on, which gives the later exits' answers of the rest: Ideal and the sweep.
 * Each device alone is measured in process (in the fog a device never answers alone unless its
 * capture's answer is late).
 */
import { accuracyReport, adaptiveDecisions } from "../core/evaluation.js";
import type { ExitPolicy } from "../core/exit.js";
import { ViewsPipeline } from "../core/views-pipeline.js";
import type { ExitAnswer } from "../core/wire/frame.js";
import { upstreamCompute } from "../device-agent/agent.js";
import { type DeviceAndServer, deviceAndServer, latency, type Row } from "./measure.js";
import type { TableIIRow, ViewDevice, ViewsReport } from "./schema.js";
import type { PathModel, SampleTrace, Traces } from "./sweep.js";

/** The in-process multi-view pipeline on the captures: every view present, and each view alone. */
export interface ViewsReference {
  readonly policy: ExitPolicy;
  readonly inProcess: ViewsReport["inProcess"];
  /** Per capture: the exit stage and label with every view present. */
  readonly exitStage: Int32Array;
  readonly label: Int32Array;
  /** Per view: its device's own exit over every capture, and the system's Overall, with only that view. */
  readonly alone: readonly { readonly accuracy: number; readonly overall: number }[];
}

/** Runs the bundle in process on `count` captures (`pixels[v]`: view v's raw images). */
export async function viewsReference(
  bundlePath: string,
  thresholds: Readonly<Record<string, number>>,
  pixels: readonly Uint8Array[],
  count: number,
  truth: ArrayLike<number>,
  names: readonly string[],
): Promise<ViewsReference> {
  const reference = await ViewsPipeline.load(bundlePath, { thresholds });
  try {
    const policy = reference.policy;
    const full = await reference.evaluateAll(pixels, count);
    const all = accuracyReport(full, policy, truth, names);
    const decisions = adaptiveDecisions(full, policy);
    const alone: { accuracy: number; overall: number }[] = [];
    for (let v = 0; v < pixels.length; v++) {
      const only = await reference.evaluateAll(
        pixels.map((p, u) => (u === v ? p : undefined)),
        count,
      );
      const r = accuracyReport(only, policy, truth, names);
      // With one view present the aggregate is that view's own logits: its device alone.
      alone.push({ accuracy: r.stages[0]!.accuracyAll, overall: r.overall });
    }
    const last = all.stages[all.stages.length - 1]!;
    return {
      policy,
      inProcess: {
        local: all.stages[0]!.accuracyAll,
        server: all.stages.length > 1 ? last.accuracyExited : null,
        overall: all.overall,
        ideal: all.ideal,
        exitRates: Object.fromEntries(all.stages.map((s) => [s.name, s.exitRate])),
      },
      exitStage: decisions.exitStage,
      label: decisions.label,
      alone,
    };
  } finally {
    await reference.release();
  }
}

/** One pass of the views' replay: every device's answers, by view. */
export interface ViewsPass {
  readonly rows: readonly (readonly Row[])[];
  readonly wallS: number;
  /** Bytes of every view frame the devices published during the pass (what the broker carried). */
  readonly viewBytes: readonly number[];
  /** Bytes of every request the gateway forwarded to the next stage during the pass. */
  readonly forwardedBytes: readonly number[];
}

export interface HorizontalRun {
  /** The Device&Server row, exits and probe counts, per capture. */
  readonly ds: DeviceAndServer;
  /** Per capture: view 0's answer, its exits completed from the probe pass where they agree. */
  readonly captures: readonly Row[];
  readonly views: ViewsReport;
}

const sameExit = (a: ExitAnswer | undefined, b: ExitAnswer | undefined) =>
  a !== undefined && b !== undefined && a.label === b.label && a.entropy === b.entropy;

/**
 * The horizontal configuration's Table II and views section from the run (`main`), the probe pass
 * (`probe`, null for none) and the in-process reference.
 */
export function horizontalRun(input: {
  readonly main: ViewsPass;
  readonly probe: ViewsPass | null;
  readonly names: readonly string[];
  readonly thresholds: readonly (number | undefined)[];
  readonly reference: ViewsReference;
  readonly layout: { count: number; localAggregation: string; featureAggregation: string };
  readonly fusionWindowMs: number;
}): HorizontalRun {
  const { main, probe, names, reference, layout } = input;
  const k = names.length;
  const byIndex = (rows: readonly Row[]) => new Map(rows.map((r) => [r.index, r]));
  const probe0 = probe ? byIndex(probe.rows[0] ?? []) : new Map<number, Row>();
  let differed = 0;
  const captures = [...(main.rows[0] ?? [])]
    .sort((a, b) => a.index - b.index)
    .map((r): Row => {
      const p = probe0.get(r.index);
      if (!p || p.answer.degraded) return r;
      const own = new Map((r.answer.exits ?? []).map((e) => [e.stage, e]));
      const probed = new Map((p.answer.exits ?? []).map((e) => [e.stage, e]));
      // The probe's later exits are this capture's only where it fused the same views into the
      // same aggregate (a degraded answer of the run has neither: the probe's stand).
      if (
        !r.answer.degraded &&
        (p.answer.views?.join() !== r.answer.views?.join() || !sameExit(own.get(0), probed.get(0)))
      ) {
        differed++;
        return r;
      }
      const exits = Array.from({ length: k }, (_, s) => own.get(s) ?? probed.get(s)).filter(
        (e): e is ExitAnswer => e !== undefined,
      );
      return { ...r, answer: { ...r.answer, exits } };
    });
  const n = captures.length;
  const measured = deviceAndServer(captures, names, input.thresholds);

  // Bytes: every device sends its view of every capture; the gateway forwards what goes on.
  const viewBytes = main.viewBytes.reduce((a, b) => a + b, 0);
  const forwardedBytes = main.forwardedBytes.reduce((a, b) => a + b, 0);
  const mean = (total: number, count: number) => (count > 0 ? total / count : null);
  const row: TableIIRow = {
    ...measured.row,
    bytesPerOffload: mean(viewBytes, main.viewBytes.length),
    bytesPerSample: mean(viewBytes + forwardedBytes, n),
  };

  const agree = captures.filter(
    (r) =>
      !r.answer.degraded &&
      r.answer.stageIndex === reference.exitStage[r.index] &&
      r.answer.label === reference.label[r.index],
  ).length;
  const others = main.rows.map(byIndex);
  const sameAnswer = captures.filter((r) =>
    others.every((m) => {
      const o = m.get(r.index);
      return (
        o !== undefined &&
        o.answer.label === r.answer.label &&
        o.answer.stageIndex === r.answer.stageIndex
      );
    }),
  ).length;
  const devices: ViewDevice[] = main.rows.map((rows, v) => ({
    view: v,
    answered: rows.length,
    degraded: rows.filter((r) => r.answer.degraded).length,
    aloneAccuracy: reference.alone[v]?.accuracy ?? Number.NaN,
    aloneOverall: reference.alone[v]?.overall ?? Number.NaN,
    total: latency(rows.map((r) => r.answer.timings.total)),
  }));
  const overalls = reference.alone.map((a) => a.overall);
  const probeRows = probe?.rows[0] ?? [];
  return {
    ds: { ...measured, row },
    captures,
    views: {
      count: layout.count,
      localAggregation: layout.localAggregation,
      featureAggregation: layout.featureAggregation,
      fusionWindowMs: input.fusionWindowMs,
      captures: n,
      devices,
      bestSingleView: overalls.indexOf(Math.max(...overalls)),
      capturesFusedComplete: captures.filter((r) => r.answer.views?.length === layout.count).length,
      sameAnswerOnEveryDevice: sameAnswer,
      inProcess: reference.inProcess,
      agreementWithInProcess: n ? agree / n : 0,
      bytes: {
        viewFrame: mean(viewBytes, main.viewBytes.length),
        forwardedFrame: mean(forwardedBytes, main.forwardedBytes.length),
        forwarded: main.forwardedBytes.length,
        perCapture: mean(viewBytes + forwardedBytes, n),
      },
      probePass: probe
        ? {
            answered: probeRows.length,
            degraded: probeRows.filter((r) => r.answer.degraded).length,
            differed,
            wallSeconds: probe.wallS,
          }
        : null,
    },
  };
}

/** Messages on the way to an answer at stage j: device -> gateway (-> next stage ... and back) -> device. */
const legs = (j: number) => 2 * (j + 1);

/** The tier whose reply timing holds stage s's compute (the gateway's fusion is the edge's). */
const tierOf = (s: number, k: number) => (s === k - 1 ? "server" : "edge");

function queues(timings: Readonly<Record<string, number>>): number {
  return Object.entries(timings)
    .filter(([key]) => key.endsWith("Queue"))
    .reduce((a, [, v]) => a + v, 0);
}

/**
 * The sweep's traces of the horizontal run, one per capture with every exit's answer: T_Device of
 * view 0's device, and the round trip to each exit: measured where the run or the probe pass was
 * answered there; otherwise (the aggregate of a capture that went on) that answer's fusion compute
 * and window wait plus its share of the deeper answer's communication per message.
 */
export function viewsTraces(
  run: HorizontalRun,
  main: ViewsPass,
  probe: ViewsPass | null,
  stages: number,
): Traces {
  const probe0 = new Map((probe?.rows[0] ?? []).map((r) => [r.index, r]));
  // The capture's K view frames, whatever its exit: every device always sends its view (a device
  // whose answer came too late does not know its frame's size: the run's mean stands for it).
  const meanView = main.viewBytes.length
    ? main.viewBytes.reduce((a, b) => a + b, 0) / main.viewBytes.length
    : 0;
  const frames = new Map<number, number>();
  for (const rows of main.rows)
    for (const r of rows)
      frames.set(
        r.index,
        (frames.get(r.index) ?? 0) + (r.answer.bytesSent > 0 ? r.answer.bytesSent : meanView),
      );
  const traces: SampleTrace[] = [];
  let incomplete = 0;
  const overhead: number[] = [];
  for (const r of run.captures) {
    const a = r.answer;
    if (!a.degraded)
      overhead.push(a.timings.total - a.timings.device - (a.timings.comm + a.timings.upstream));
  }
  for (const r of run.captures) {
    const a = r.answer;
    const exits = new Array<ExitAnswer | undefined>(stages).fill(undefined);
    for (const e of a.exits ?? []) if (e.stage < stages) exits[e.stage] = e;
    const measured = new Map<number, { rt: number; timings: Readonly<Record<string, number>> }>();
    if (!a.degraded && a.upstreamTimings)
      measured.set(a.stageIndex, {
        rt: a.timings.comm + a.timings.upstream,
        timings: a.upstreamTimings,
      });
    const p = probe0.get(r.index);
    if (p && !p.answer.degraded && p.answer.upstreamTimings && !measured.has(p.answer.stageIndex))
      measured.set(p.answer.stageIndex, {
        rt: p.answer.timings.comm + p.answer.timings.upstream,
        timings: p.answer.upstreamTimings,
      });
    const perLeg = (d: { rt: number; timings: Readonly<Record<string, number>> }, at: number) =>
      Math.max(0, d.rt - upstreamCompute(d.timings) - queues(d.timings)) / legs(at);
    const deepest = [...measured.keys()].sort((x, y) => y - x)[0];
    const dm = deepest === undefined ? undefined : measured.get(deepest);
    const roundTripMs = Array.from({ length: stages }, (_, j) => {
      const m = measured.get(j);
      if (m) return m.rt;
      const deeper = [...measured.keys()].filter((d) => d > j).sort((x, y) => x - y)[0];
      if (deeper === undefined) return Number.NaN;
      const d = measured.get(deeper)!;
      let upTo = 0;
      for (const tier of new Set(Array.from({ length: j + 1 }, (_, s) => tierOf(s, stages))))
        upTo += (d.timings[tier] ?? 0) + (d.timings[`${tier}Queue`] ?? 0);
      return upTo + perLeg(d, deeper) * legs(j);
    });
    if (
      a.degraded ||
      exits.some((e) => e === undefined) ||
      roundTripMs.some((v) => !Number.isFinite(v))
    ) {
      incomplete++;
      continue;
    }
    traces.push({
      truth: r.truth,
      exits: exits as ExitAnswer[],
      deviceMs: a.timings.device,
      roundTripMs,
      bytes: frames.get(r.index) ?? 0,
      stageMs: Array.from({ length: stages }, (_, j) =>
        j === 0 ? a.timings.device : (dm?.timings[tierOf(j, stages)] ?? Number.NaN),
      ),
      perLegMs: dm && deepest !== undefined ? perLeg(dm, deepest) : Number.NaN,
    });
  }
  return {
    traces,
    incomplete,
    localOverheadMs: 0,
    remoteOverheadMs: overhead.length ? overhead.reduce((x, y) => x + y, 0) / overhead.length : 0,
    // No exit on the device: the first exit is the gateway's aggregate.
    deviceTo: -1,
  };
}

/**
 * A capture's path to an answer at stage j: T_Device, the round trip to that exit and the agent's
 * overhead; bytes: its K view frames, and the gateway's request (the run's mean) when it goes on.
 */
export function viewsPath(t: Traces, forwardedFrame: number | null): PathModel {
  return (s, j) => ({
    ms: s.deviceMs + s.roundTripMs[j]! + t.remoteOverheadMs,
    bytes: s.bytes + (j > 0 ? (forwardedFrame ?? 0) : 0),
  });
}

export const VIEWS_SWEEP_METHOD =
  "per capture: the local aggregate's and every later exit's label and entropy (from the run, and for captures the aggregate answered from the probe pass that sent every capture on); T_Total = view 0's device's measured T_Device + the round trip to the exit that answers (measured in the run or the probe pass; the aggregate's, for a capture that went on, is its fusion compute and window wait plus 2 of the 4 messages' share of the deeper answer's communication) + the agent's mean overhead; bytes = the capture's K view frames + the run's mean forwarded request when it goes on";
