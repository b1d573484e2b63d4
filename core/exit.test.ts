import { describe, expect, it } from "vitest";
import { argmax, ExitPolicy, normalizedEntropy } from "./exit.js";

describe("normalizedEntropy", () => {
  it("is 1 for uniform logits and 0 for a certain one", () => {
    expect(normalizedEntropy([2, 2, 2, 2], 0, 4)).toBeCloseTo(1, 12);
    expect(normalizedEntropy([0, 1000, 0], 0, 3)).toBe(0);
  });

  it("matches the definition -sum p ln p / ln C", () => {
    const logits = [0.3, -1.2, 2.5];
    const z = logits.map(Math.exp).reduce((a, b) => a + b, 0);
    const p = logits.map((l) => Math.exp(l) / z);
    const expected = -p.reduce((s, pi) => s + pi * Math.log(pi), 0) / Math.log(3);
    expect(normalizedEntropy(logits, 0, 3)).toBeCloseTo(expected, 12);
  });

  it("stays finite for logits that overflow a naive softmax", () => {
    const eta = normalizedEntropy(new Float32Array([3e38, 3e38, -3e38]), 0, 3);
    expect(eta).toBeCloseTo(Math.log(2) / Math.log(3), 9);
    expect(normalizedEntropy([1e4, 1e4 - 1, 0], 0, 3)).toBeGreaterThan(0);
  });

  it("reads a row at an offset", () => {
    expect(normalizedEntropy([9, 9, 0, 0], 2, 2)).toBeCloseTo(1, 12);
  });

  it("refuses fewer than two classes and propagates NaN", () => {
    expect(() => normalizedEntropy([1], 0, 1)).toThrow(/two classes/);
    expect(normalizedEntropy([Number.NaN, 1], 0, 2)).toBeNaN();
  });
});

describe("ExitPolicy", () => {
  it("exits strictly below the threshold; the last stage always answers", () => {
    const p = new ExitPolicy([0.4, undefined]);
    expect(p.exits(0, 0.39)).toBe(true);
    expect(p.exits(0, 0.4)).toBe(false);
    expect(p.exits(1, 1)).toBe(true);
    expect(p.exits(0, Number.NaN)).toBe(false);
  });

  it("refuses thresholds outside [0, 1] and a threshold on the last stage", () => {
    expect(() => new ExitPolicy([1.5, undefined])).toThrow(/between 0 and 1/);
    expect(() => new ExitPolicy([0.5, 0.5])).toThrow(/last stage/);
    expect(() => new ExitPolicy([undefined, undefined])).toThrow(/stage 0/);
  });
});

describe("argmax", () => {
  it("takes the first of equal maxima, like numpy", () => {
    expect(argmax([1, 3, 3, 0], 0, 4)).toBe(1);
    expect(argmax([5, 0, 1, 2], 1, 3)).toBe(2);
  });
});
