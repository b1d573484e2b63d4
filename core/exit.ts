/**
 * The DDNN exit rule: p = softmax(logits), eta = -sum(p_i ln p_i) / ln C; a sample exits at a
 * stage when eta < threshold, and the last stage always answers.
 */

/** Normalized entropy of softmax(logits[offset .. offset+classes)), in [0, 1]. */
export function normalizedEntropy(
  logits: ArrayLike<number>,
  offset: number,
  classes: number,
): number {
  if (classes < 2) throw new RangeError("normalized entropy needs at least two classes");
  // Log-softmax form: stays finite for logits of any size (a naive exp overflows past ~88 in f32).
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < classes; i++) {
    const v = logits[offset + i] as number;
    if (v > max) max = v;
  }
  if (!Number.isFinite(max)) return Number.NaN;
  let sum = 0;
  for (let i = 0; i < classes; i++) sum += Math.exp((logits[offset + i] as number) - max);
  const logSum = Math.log(sum);
  let h = 0;
  for (let i = 0; i < classes; i++) {
    const logp = (logits[offset + i] as number) - max - logSum;
    h -= Math.exp(logp) * logp;
  }
  const eta = h / Math.log(classes);
  // Rounding can leave eta a hair outside [0, 1].
  return eta < 0 ? 0 : Math.min(eta, 1);
}

/** Index of the largest logit (first one on ties, like numpy/torch argmax). */
export function argmax(values: ArrayLike<number>, offset: number, length: number): number {
  let best = 0;
  let bestValue = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < length; i++) {
    const v = values[offset + i] as number;
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

/** Per-stage thresholds; `undefined` marks the last stage, which always answers. */
export class ExitPolicy {
  constructor(readonly thresholds: readonly (number | undefined)[]) {
    thresholds.forEach((t, i) => {
      const last = i === thresholds.length - 1;
      if (last && t !== undefined)
        throw new RangeError("the last stage always answers; it has no threshold");
      if (!last && (t === undefined || !(t >= 0 && t <= 1))) {
        throw new RangeError(`stage ${i}: threshold must be between 0 and 1 (got ${t})`);
      }
    });
  }

  /** True when a sample with this entropy leaves the pipeline at `stage`. NaN never exits early. */
  exits(stage: number, eta: number): boolean {
    const t = this.thresholds[stage];
    return t === undefined || eta < t;
  }
}
