import { describe, expect, it } from "vitest";
import { preprocess } from "./preprocess.js";

describe("preprocess", () => {
  it("applies (u8 * scale - mean[c]) / std[c] per channel", () => {
    const spec = {
      shape: [2, 1, 2],
      dtype: "float32" as const,
      scale: 1 / 255,
      mean: [0.5, 0.25],
      std: [0.5, 2],
    };
    const x = preprocess(spec, Uint8Array.of(0, 255, 51, 102), 1);
    expect(Array.from(x).map((v) => Number(v.toFixed(6)))).toEqual([-1, 1, -0.025, 0.075]);
  });

  it("broadcasts one mean/std to every channel and checks the pixel count", () => {
    const spec = { shape: [3, 1, 1], dtype: "float32" as const, scale: 1, mean: [1], std: [2] };
    expect(Array.from(preprocess(spec, Uint8Array.of(1, 3, 5, 7, 9, 11), 2))).toEqual([
      0, 1, 2, 3, 4, 5,
    ]);
    expect(() => preprocess(spec, Uint8Array.of(1, 2), 1)).toThrow(/need 3/);
  });
});
