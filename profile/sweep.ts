/**
 * The threshold sweep from one pass. The probe run gives, for every sample, every exit's label and
 * entropy, the device's compute time, and the round trip to each exit (measured where a request
 * was answered there; otherwise estimated from a deeper answer's per-tier timings). Any setting of
 * the thresholds then says where each sample would leave, what it would be answered, and how long
 * it would take, without running the fog again.
 */
import { ExitPolicy } from "../core/exit.js";
import { percentile } from "../core/stats.js";
import type { ExitAnswer } from "../core/wire/frame.js";
import { upstreamCompute } from "../device-agent/agent.js";
import type { Row } from "./measure.js";
import type { ExitSweep, Sweep, SweepPoint } from "./schema.js";

/** One sample as the sweep sees it. */
export interface SampleTrace {
  readonly truth: number;
  /** Every exit's answer, by stage index. */
  readonly exits: readonly ExitAnswer[];
  /** Device compute, ms. */
  readonly deviceMs: number;
  /** Round trip from the device to an answer at stage j (index j; NaN at the device's stages), ms. */
  readonly roundTripMs: readonly number[];
  /** Device uplink bytes when the sample is sent upstream. */
  readonly bytes: number;
  /** Compute per stage, ms (index 0: the device's; upstream stages from the tiers' reply timings). */
  readonly stageMs: readonly number[];
  /** Communication per message of the deepest measured round trip, ms. */
  readonly perLegMs: number;
}

export interface Traces {
  readonly traces: readonly SampleTrace[];
  /** Rows that could not be traced (an exit's answer or a path's time unknown). */
  readonly incomplete: number;
  /** Mean of T_Total - T_Device over local answers: the agent's own time around the stage. */
  readonly localOverheadMs: number;
  /** Mean of T_Total - T_Device - round trip over answers from upstream. */
  readonly remoteOverheadMs: number;
  /** Last stage index the device runs. */
  readonly deviceTo: number;
}

/** The tier that runs stage `s` of a `k`-stage bundle in a local fog (timings keys). */
function tierOf(s: number, k: number): string {
  return s === k - 1 ? "server" : "edge";
}

/** Messages on the way to an answer at stage j (device -> 1 -> ... -> j -> device). */
const legs = (j: number, deviceTo: number) => j - deviceTo + 1;

export function traceRows(rows: readonly Row[], stages: number, deviceTo = 0): Traces {
  const traces: SampleTrace[] = [];
  let incomplete = 0;
  const local: number[] = [];
  const remote: number[] = [];
  for (const r of rows) {
    const a = r.answer;
    if (!a.degraded && a.stageIndex <= deviceTo) local.push(a.timings.total - a.timings.device);
    if (!a.degraded && a.stageIndex > deviceTo)
      remote.push(a.timings.total - a.timings.device - (a.timings.comm + a.timings.upstream));
  }
  for (const r of rows) {
    const a = r.answer;
    const exits = new Array<ExitAnswer | undefined>(stages).fill(undefined);
    for (const e of a.exits ?? []) if (e.stage < stages) exits[e.stage] = e;
    // Measured round trips, with the per-tier timings that came with them.
    const measured = new Map<number, { rt: number; timings: Readonly<Record<string, number>> }>();
    if (!a.degraded && a.stageIndex > deviceTo && a.upstreamTimings)
      measured.set(a.stageIndex, {
        rt: a.timings.comm + a.timings.upstream,
        timings: a.upstreamTimings,
      });
    if (a.probe && a.probe.failed === undefined && a.probe.stage > deviceTo)
      measured.set(a.probe.stage, { rt: a.probe.roundTripMs, timings: a.probe.timings });
    const roundTripMs = new Array<number>(stages).fill(Number.NaN);
    const deepest = [...measured.keys()].sort((x, y) => y - x)[0];
    const dm = deepest === undefined ? undefined : measured.get(deepest);
    const perLegMs =
      deepest === undefined || !dm
        ? Number.NaN
        : Math.max(0, dm.rt - upstreamCompute(dm.timings) - queues(dm.timings)) /
          legs(deepest, deviceTo);
    // A tier's compute covers all its stages; split evenly where it runs more than one.
    const stageMs = Array.from({ length: stages }, (_, j) => {
      if (j <= deviceTo) return j === 0 ? a.timings.device : 0;
      const tier = tierOf(j, stages);
      const share = Array.from({ length: stages }, (_, i) => i).filter(
        (i) => i > deviceTo && tierOf(i, stages) === tier,
      ).length;
      return (dm?.timings[tier] ?? Number.NaN) / share;
    });
    for (let j = deviceTo + 1; j < stages; j++) {
      const m = measured.get(j);
      if (m) {
        roundTripMs[j] = m.rt;
        continue;
      }
      const deeper = [...measured.keys()].filter((d) => d > j).sort((x, y) => x - y)[0];
      if (deeper === undefined) continue;
      const d = measured.get(deeper)!;
      const comm = Math.max(0, d.rt - upstreamCompute(d.timings) - queues(d.timings));
      const perLeg = comm / legs(deeper, deviceTo);
      let upTo = 0;
      for (const tier of new Set(
        Array.from({ length: j - deviceTo }, (_, i) => tierOf(deviceTo + 1 + i, stages)),
      ))
        upTo += (d.timings[tier] ?? 0) + (d.timings[`${tier}Queue`] ?? 0);
      roundTripMs[j] = upTo + perLeg * legs(j, deviceTo);
    }
    const bytes = a.bytesSent > 0 ? a.bytesSent : (a.probe?.bytes ?? 0);
    const known = exits.every((e) => e !== undefined);
    const timed = roundTripMs.every((v, j) => j <= deviceTo || Number.isFinite(v));
    if (!known || !timed || a.degraded) {
      incomplete++;
      continue;
    }
    traces.push({
      truth: r.truth,
      exits: exits as ExitAnswer[],
      deviceMs: a.timings.device,
      roundTripMs,
      bytes,
      stageMs,
      perLegMs,
    });
  }
  const mean = (v: number[]) => (v.length ? v.reduce((x, y) => x + y, 0) / v.length : 0);
  return {
    traces,
    incomplete,
    localOverheadMs: mean(local),
    remoteOverheadMs: mean(remote),
    deviceTo,
  };
}

function queues(timings: Readonly<Record<string, number>>): number {
  return Object.entries(timings)
    .filter(([k]) => k.endsWith("Queue"))
    .reduce((a, [, v]) => a + v, 0);
}

/** What the system would do with these thresholds (one per stage; the last one's is ignored). */
export interface Predicted {
  readonly exitRates: readonly number[];
  /** Per stage: accuracy of the samples leaving there; null where none do. */
  readonly exitAccuracy: readonly (number | null)[];
  readonly overallAccuracy: number;
  readonly meanTotalMs: number;
  readonly p95TotalMs: number;
  readonly p99TotalMs: number;
  readonly bytesPerSample: number;
}

/** Time (ms) and device uplink bytes of a sample's path to an answer at stage j. */
export type PathModel = (
  s: SampleTrace,
  j: number,
) => { readonly ms: number; readonly bytes: number };

/** The paths as the run measured them (see the module comment). */
export function measuredPath(t: Traces): PathModel {
  return (s, j) =>
    j <= t.deviceTo
      ? { ms: s.deviceMs + t.localOverheadMs, bytes: 0 }
      : { ms: s.deviceMs + s.roundTripMs[j]! + t.remoteOverheadMs, bytes: s.bytes };
}

/**
 * Where each traced sample leaves under `thresholds` (the DDNN rule, core/exit.ts) and the time
 * its path takes (`path`, by default as measured).
 */
export function predict(
  t: Traces,
  thresholds: readonly (number | undefined)[],
  path: PathModel = measuredPath(t),
): Predicted {
  const k = thresholds.length;
  const policy = new ExitPolicy(thresholds.map((x, i) => (i === k - 1 ? undefined : x)));
  const exited = new Array<number>(k).fill(0);
  const right = new Array<number>(k).fill(0);
  const totals: number[] = [];
  let bytes = 0;
  for (const s of t.traces) {
    let j = 0;
    while (j < k - 1 && !policy.exits(j, s.exits[j]!.entropy)) j++;
    exited[j]!++;
    if (s.exits[j]!.label === s.truth) right[j]!++;
    const p = path(s, j);
    totals.push(p.ms);
    bytes += p.bytes;
  }
  const n = t.traces.length;
  const sorted = totals.sort((a, b) => a - b);
  return {
    exitRates: exited.map((e) => (n ? e / n : 0)),
    exitAccuracy: exited.map((e, i) => (e ? right[i]! / e : null)),
    overallAccuracy: n ? right.reduce((a, b) => a + b, 0) / n : 0,
    meanTotalMs: n ? sorted.reduce((a, b) => a + b, 0) / n : Number.NaN,
    p95TotalMs: percentile(sorted, 95),
    p99TotalMs: percentile(sorted, 99),
    bytesPerSample: n ? bytes / n : 0,
  };
}

/** Thresholds 0, 1/steps, ..., 1 (exact decimal steps, so 0.35 is 0.35). */
export function grid(steps: number): number[] {
  return Array.from({ length: steps + 1 }, (_, i) => Number((i / steps).toFixed(6)));
}

/**
 * For each exit but the last: its threshold over the grid, the other exits at `current`. `path`
 * and `method` replace the measured path model and its description (the horizontal DDNN's).
 */
export function sweepExits(
  t: Traces,
  names: readonly string[],
  current: readonly (number | undefined)[],
  steps: number,
  options: { readonly path?: PathModel; readonly method?: string } = {},
): Sweep {
  const exits: ExitSweep[] = names.slice(0, -1).map((exit, e) => ({
    exit,
    currentThreshold: current[e] ?? 0,
    points: grid(steps).map((threshold): SweepPoint => {
      const thresholds = current.map((c, i) => (i === e ? threshold : c));
      const p = predict(t, thresholds, options.path);
      return {
        threshold,
        exitRate: p.exitRates[e] ?? 0,
        overallAccuracy: p.overallAccuracy,
        exitAccuracy: p.exitAccuracy[e] ?? null,
        meanTotalMs: p.meanTotalMs,
        p95TotalMs: p.p95TotalMs,
        bytesPerSample: p.bytesPerSample,
        exitRates: p.exitRates,
      };
    }),
  }));
  return {
    samples: t.traces.length,
    method:
      options.method ??
      "per sample: every exit's label and entropy from the probe run; T_Total = measured T_Device + measured round trip to the exit that answers (a shallower exit's round trip, where only a deeper one was measured, is that answer's compute and queue up to the exit plus its per-message share of the communication) + the agent's mean overhead; bytes = the device's request frame",
    exits,
  };
}
