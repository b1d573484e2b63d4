/**
 * The advice: the exit thresholds that maximise Overall accuracy with p95 T_Total within the SLO
 * and each device's uplink within its byte budget, searched over the sweep's grid (every exit's
 * threshold jointly) on the one probe pass; and whether running upstream stages on another tier
 * would do better, from the measured per-stage times. Printed as a DDNNModel patch.
 */
import type { Manifest } from "../core/bundle/manifest.js";
import type { Advice } from "./schema.js";
import {
  grid,
  measuredPath,
  type PathModel,
  type Predicted,
  predict,
  type Traces,
} from "./sweep.js";

export interface AdviceGoal {
  readonly sloMs: number | null;
  readonly bytesPerSecond: number | null;
  /** Frames per second per device. */
  readonly fps: number;
  readonly steps: number;
  /** The run's device slowdown: a stage moved onto the device runs this many times slower. */
  readonly deviceSlowdown: number;
}

interface Candidate {
  readonly thresholds: readonly (number | undefined)[];
  readonly p: Predicted;
}

/** Every combination of grid thresholds for the exits but the last. */
function combinations(k: number, values: readonly number[]): (number | undefined)[][] {
  let out: (number | undefined)[][] = [[]];
  for (let e = 0; e < k - 1; e++) out = out.flatMap((c) => values.map((v) => [...c, v]));
  return out.map((c) => [...c, undefined]);
}

function best(t: Traces, k: number, goal: AdviceGoal, path: PathModel): Candidate | null {
  // Joint search; for many exits the grid is thinned so the search stays small.
  const steps = Math.max(2, Math.min(goal.steps, Math.floor(20_000 ** (1 / Math.max(1, k - 1)))));
  let top: Candidate | null = null;
  for (const thresholds of combinations(k, grid(steps))) {
    const p = predict(t, thresholds, path);
    if (goal.sloMs !== null && !(p.p95TotalMs <= goal.sloMs)) continue;
    if (goal.bytesPerSecond !== null && p.bytesPerSample * goal.fps > goal.bytesPerSecond) continue;
    const better =
      !top ||
      p.overallAccuracy > top.p.overallAccuracy ||
      (p.overallAccuracy === top.p.overallAccuracy &&
        (p.p95TotalMs < top.p.p95TotalMs ||
          (p.p95TotalMs === top.p.p95TotalMs && p.bytesPerSample < top.p.bytesPerSample)));
    if (better) top = { thresholds, p };
  }
  return top;
}

/**
 * Other placements, predicted from the measured per-stage times: every upstream stage on the
 * device (no traffic; the stages run at the server's measured speed times the device slowdown),
 * and, with a gateway, the edge stages on the server (one message less for what goes on).
 */
function placements(
  t: Traces,
  names: readonly string[],
  slowdown: number,
): { name: string; placement: Record<string, string>; path: PathModel }[] {
  const k = names.length;
  if (k < 2) return [];
  const out: { name: string; placement: Record<string, string>; path: PathModel }[] = [];
  out.push({
    name: "every stage on the device (upstream stages at the server's measured per-sample time x the device slowdown)",
    placement: Object.fromEntries(names.map((n) => [n, "device"])),
    path: (s, j) => {
      let ms = s.deviceMs + t.localOverheadMs;
      for (let i = t.deviceTo + 1; i <= j; i++) ms += s.stageMs[i]! * slowdown;
      return { ms, bytes: 0 };
    },
  });
  if (k >= 3) {
    const measured = measuredPath(t);
    out.push({
      name: "the edge stages on the server",
      placement: Object.fromEntries(names.map((n, i) => [n, i === 0 ? "device" : "server"])),
      path: (s, j) => {
        const m = measured(s, j);
        // Through the edge to the server is one message more than straight to the server.
        return j === k - 1 ? { ms: m.ms - s.perLegMs, bytes: m.bytes } : m;
      },
    });
  }
  return out;
}

const pct = (x: number) => `${(x * 100).toFixed(2)}%`;
const ms = (x: number) => `${x.toFixed(3)} ms`;

function yaml(exits: Record<string, number>, placement: Record<string, string> | null): string {
  const lines = ["spec:", "  exits:", ...Object.entries(exits).map(([s, t]) => `    ${s}: ${t}`)];
  if (placement)
    lines.push(
      "  placement:",
      ...Object.entries(placement).map(([s, tier]) => `    ${s}: ${tier}`),
    );
  return `${lines.join("\n")}\n`;
}

/** How the advice reads the traces: the horizontal DDNN's paths, bytes and words. */
export interface AdviceModel {
  /** The paths on the current placement (default: as measured, measuredPath). */
  readonly path?: PathModel;
  /** Also predict other placements of the stages (default true). */
  readonly placements?: boolean;
  /** What `bytesPerSample x fps` is, e.g. "B/s per device". */
  readonly bytesUnit?: string;
  /** Where the traces came from, e.g. "samples of the probe run". */
  readonly source?: string;
}

export function advise(
  t: Traces,
  manifest: Manifest,
  current: readonly (number | undefined)[],
  goal: AdviceGoal,
  model: AdviceModel = {},
): Advice {
  const names = manifest.stages.map((s) => s.name);
  const k = names.length;
  const path = model.path ?? measuredPath(t);
  const unit = model.bytesUnit ?? "B/s per device";
  const now = predict(t, current, path);
  const constraints = [
    goal.sloMs !== null ? `p95 T_Total within ${goal.sloMs} ms` : "no latency bound (no --slo-ms)",
    goal.bytesPerSecond !== null
      ? `uplink within ${goal.bytesPerSecond} ${unit} at ${goal.fps} frames/s`
      : "no byte budget (no --bytes-per-second)",
  ].join(", ");
  const here = best(t, k, goal, path);
  const summary: string[] = [
    `Now (thresholds ${names
      .slice(0, -1)
      .map((n, i) => `${n} ${current[i]}`)
      .join(
        ", ",
      )}): Overall ${pct(now.overallAccuracy)}, p95 T_Total ${ms(now.p95TotalMs)}, ${(now.bytesPerSample * goal.fps).toFixed(0)} ${unit}; constraints: ${constraints}; predicted from ${t.traces.length} ${model.source ?? "samples of the probe run"}.`,
  ];
  summary.push(
    here
      ? `On the current placement the best setting is ${names
          .slice(0, -1)
          .map((n, i) => `${n} ${here.thresholds[i]}`)
          .join(
            ", ",
          )}: Overall ${pct(here.p.overallAccuracy)}, p95 T_Total ${ms(here.p.p95TotalMs)}, ${(here.p.bytesPerSample * goal.fps).toFixed(0)} ${unit}.`
      : "On the current placement no threshold setting meets the constraints.",
  );
  const alternatives = (model.placements === false ? [] : placements(t, names, goal.deviceSlowdown))
    .map((a) => ({ ...a, c: best(t, k, goal, a.path) }))
    .filter((a) => a.c !== null);
  for (const a of alternatives)
    summary.push(
      `With ${a.name}: best Overall ${pct(a.c!.p.overallAccuracy)} at p95 T_Total ${ms(a.c!.p.p95TotalMs)}, ${(a.c!.p.bytesPerSample * goal.fps).toFixed(0)} ${unit}.`,
    );
  const moved = alternatives
    .filter(
      (a) =>
        !here ||
        a.c!.p.overallAccuracy > here.p.overallAccuracy ||
        (a.c!.p.overallAccuracy === here.p.overallAccuracy &&
          a.c!.p.p95TotalMs < here.p.p95TotalMs * 0.8),
    )
    .sort((x, y) => y.c!.p.overallAccuracy - x.c!.p.overallAccuracy)[0];
  const chosen = moved ? moved.c! : here;
  const bestHere = here
    ? {
        thresholds: Object.fromEntries(
          names.slice(0, -1).map((n, i) => [n, here.thresholds[i] as number]),
        ),
        overallAccuracy: here.p.overallAccuracy,
        p95TotalMs: here.p.p95TotalMs,
      }
    : null;
  if (!chosen) {
    if (model.placements !== false)
      summary.push("No threshold setting meets the constraints, on this placement or another.");
    return {
      sloMs: goal.sloMs,
      bytesPerSecondBudget: goal.bytesPerSecond,
      framesPerS: goal.fps,
      thresholds: null,
      predicted: null,
      placement: null,
      bestHere,
      summary,
      patchYaml: null,
    };
  }
  const thresholds = Object.fromEntries(
    names.slice(0, -1).map((n, i) => [n, chosen.thresholds[i] as number]),
  );
  const same = names.slice(0, -1).every((_, i) => chosen.thresholds[i] === current[i]);
  summary.push(
    `Advised: thresholds ${Object.entries(thresholds)
      .map(([s, v]) => `${s} ${v}`)
      .join(
        ", ",
      )}${moved ? ` with ${moved.name}` : ""}: Overall ${pct(chosen.p.overallAccuracy)} (now ${pct(now.overallAccuracy)}), p95 T_Total ${ms(chosen.p.p95TotalMs)}, ${(chosen.p.bytesPerSample * goal.fps).toFixed(0)} ${unit}.`,
  );
  return {
    sloMs: goal.sloMs,
    bytesPerSecondBudget: goal.bytesPerSecond,
    framesPerS: goal.fps,
    thresholds,
    predicted: {
      overallAccuracy: chosen.p.overallAccuracy,
      p95TotalMs: chosen.p.p95TotalMs,
      bytesPerSecond: chosen.p.bytesPerSample * goal.fps,
    },
    placement: moved ? moved.placement : null,
    bestHere,
    summary,
    patchYaml: same && !moved ? null : yaml(thresholds, moved ? moved.placement : null),
  };
}
