import { ConfigError } from "./config.js";
import type { ExitPolicy } from "./exit.js";
import type { FullResult } from "./pipeline.js";

/** One stage's row of the accuracy table. */
export interface StageReport {
  readonly name: string;
  /** Fraction of samples answered by this stage's exit. */
  readonly exitRate: number;
  /** Accuracy of this exit over all samples (paper: Local Accuracy for the first stage). */
  readonly accuracyAll: number;
  /** Accuracy over the samples that exited here (paper: Server Accuracy for the last stage); null if none. */
  readonly accuracyExited: number | null;
}

/** The reference paper's accuracy columns, generalised to any number of stages. */
export interface AccuracyReport {
  readonly samples: number;
  readonly stages: readonly StageReport[];
  /** Accuracy of the adaptive system. */
  readonly overall: number;
  /** A sample counts as correct if any exit is correct. */
  readonly ideal: number;
}

/** Where each sample exits under `policy`, and the label it gets there. */
export function adaptiveDecisions(
  result: FullResult,
  policy: ExitPolicy,
): { exitStage: Int32Array; label: Int32Array } {
  const exitStage = new Int32Array(result.samples);
  const label = new Int32Array(result.samples);
  const last = result.labels.length - 1;
  for (let i = 0; i < result.samples; i++) {
    let s = 0;
    while (s < last && !policy.exits(s, (result.entropy[s] as Float64Array)[i] as number)) s++;
    exitStage[i] = s;
    label[i] = (result.labels[s] as Int32Array)[i] as number;
  }
  return { exitStage, label };
}

export function accuracyReport(
  result: FullResult,
  policy: ExitPolicy,
  truth: ArrayLike<number>,
  stageNames: readonly string[],
): AccuracyReport {
  const n = result.samples;
  if (truth.length < n) throw new ConfigError(`${truth.length} labels for ${n} samples`);
  const { exitStage, label } = adaptiveDecisions(result, policy);
  const k = stageNames.length;
  const exited = new Array<number>(k).fill(0);
  const exitedCorrect = new Array<number>(k).fill(0);
  const correctAll = new Array<number>(k).fill(0);
  let overall = 0;
  let ideal = 0;
  for (let i = 0; i < n; i++) {
    const y = truth[i];
    let any = false;
    for (let s = 0; s < k; s++) {
      if ((result.labels[s] as Int32Array)[i] === y) {
        correctAll[s] = (correctAll[s] as number) + 1;
        any = true;
      }
    }
    const s = exitStage[i] as number;
    exited[s] = (exited[s] as number) + 1;
    if (label[i] === y) {
      exitedCorrect[s] = (exitedCorrect[s] as number) + 1;
      overall++;
    }
    if (any) ideal++;
  }
  return {
    samples: n,
    stages: stageNames.map((name, s) => ({
      name,
      exitRate: n ? (exited[s] as number) / n : 0,
      accuracyAll: n ? (correctAll[s] as number) / n : 0,
      accuracyExited: exited[s] ? (exitedCorrect[s] as number) / (exited[s] as number) : null,
    })),
    overall: n ? overall / n : 0,
    ideal: n ? ideal / n : 0,
  };
}
