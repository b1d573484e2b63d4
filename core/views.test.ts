import { describe, expect, it } from "vitest";
import { aggregateFeatures, aggregateLogits } from "./views.js";

const f32 = (values: number[]) => Float32Array.from(values);

describe("the local aggregator (exit logits)", () => {
  const a = f32([1, -2, 3, 0.5]);
  const b = f32([0, 4, -1, 2.5]);
  const c = f32([2, 1, 7, -3]);

  it("max takes the elementwise maximum over the views present", () => {
    expect(aggregateLogits("max", [a, b, undefined])).toEqual(f32([1, 4, 3, 2.5]));
    expect(aggregateLogits("max", [undefined, b, c])).toEqual(f32([2, 4, 7, 2.5]));
  });

  it("avg divides the sum of the views present by their count", () => {
    expect(aggregateLogits("avg", [a, b, undefined])).toEqual(f32([0.5, 1, 1, 1.5]));
    expect(aggregateLogits("avg", [a, b, c])).toEqual(f32([1, 1, 3, 0]));
  });

  it("with one view present both are that view, bit for bit", () => {
    for (const how of ["max", "avg"] as const)
      expect(aggregateLogits(how, [undefined, b, undefined])).toEqual(b);
  });

  it("avg rounds each partial sum to float32, in view order, as the trainer does", () => {
    const big = f32([16777216]);
    const one = f32([1]);
    // (2^24 + 1) rounds back to 2^24 in float32; the exact mean would be 16777217 / 1.5.
    const ordered = Math.fround(Math.fround(Math.fround(16777216 + 1) + 1) / 3);
    expect(aggregateLogits("avg", [big, one, one])[0]).toBe(ordered);
    expect(ordered).not.toBe(Math.fround(16777218 / 3));
  });

  it("keeps NaN (max as torch.maximum) and refuses an empty or ragged set", () => {
    expect(aggregateLogits("max", [f32([Number.NaN, 1]), f32([0, 2])])).toEqual(
      f32([Number.NaN, 2]),
    );
    expect(aggregateLogits("max", [f32([0, 1]), f32([Number.NaN, 2])])[0]).toBeNaN();
    expect(() => aggregateLogits("max", [undefined, undefined])).toThrow(/no view present/);
    expect(() => aggregateLogits("avg", [f32([1]), f32([1, 2])])).toThrow(/differ in length/);
  });
});

describe("the feature aggregator", () => {
  it("concat lays the views along the channel axis per sample, zeros for a missing view", () => {
    // Two samples of two values (C = 2, no spatial axes) from each of three views; view 1 missing.
    const v0 = f32([1, 2, 3, 4]);
    const v2 = f32([5, 6, 7, 8]);
    expect(aggregateFeatures("concat", [v0, undefined, v2], 2)).toEqual(
      f32([1, 2, 0, 0, 5, 6, 3, 4, 0, 0, 7, 8]),
    );
    expect(() => aggregateFeatures("concat", [f32([1, 2, 3])], 2)).toThrow(/do not split/);
  });

  it("max and avg keep the shape of one device's features", () => {
    const v0 = f32([0, 2, 4, 0]);
    const v1 = f32([1, 0, 2, 6]);
    expect(aggregateFeatures("max", [v0, v1], 2)).toEqual(f32([1, 2, 4, 6]));
    expect(aggregateFeatures("avg", [v0, v1], 2)).toEqual(f32([0.5, 1, 3, 3]));
    expect(aggregateFeatures("avg", [undefined, v1], 2)).toEqual(v1);
  });
});
