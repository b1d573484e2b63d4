/** Bit-packed binarized layers: 1 bit per weight plus one float per channel, the floats' results. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { tempDir } from "../test/support/bundle-fixture.js";
import { root } from "../test/support/run.js";
import { buildStage, runDevice } from "./harness.js";
import { binaryMagnitudes, signBits } from "./pack.js";

describe("bit-packing", () => {
  it("finds layers whose weights are one magnitude per output channel with signs only", () => {
    const w = Float32Array.from([
      0.5, -0.5, 0.5, 0.5, -0.5, 0.5, -0.5, -0.5, 2, 2, -2, 2, 2, 2, -2, -2,
    ]);
    expect(Array.from(binaryMagnitudes(w, 2, (i) => Math.floor(i / 8))!)).toEqual([0.5, 2]);
    const mixed = Float32Array.from(w);
    mixed[3] = 0.25;
    expect(binaryMagnitudes(mixed, 2, (i) => Math.floor(i / 8))).toBeUndefined();
    // Too few weights per channel to be worth it, or a zero weight: left as floats.
    expect(binaryMagnitudes(Float32Array.from([1, -1, 1, 1]), 2, (i) => i >> 1)).toBeUndefined();
    expect(binaryMagnitudes(new Float32Array(16), 2, (i) => i >> 3)).toBeUndefined();
    expect(Array.from(signBits(w, 2, (i) => i))).toEqual([0b00101101, 0b00111011]);
  });

  it("fashion-shallow gives the same labels and exits packed and unpacked, outputs within 1e-5", async () => {
    const work = tempDir("ddnn-codegen-pack-");
    const bundle = join(root, "models/fashion-shallow");
    const images = join(root, "models/eval/fashion-mnist-t10k-2000-images-idx3-ubyte.gz");
    const labels = join(root, "models/eval/fashion-mnist-t10k-2000-labels-idx1-ubyte.gz");
    const packed = await buildStage(bundle, join(work, "packed"));
    const floats = await buildStage(bundle, join(work, "floats"), [], { pack: false });
    expect(packed.generated.report.packed).toHaveLength(2);
    expect(floats.generated.report.packed).toHaveLength(0);
    const a = await runDevice(packed.program, images, labels, packed.dir, ["--limit", "300"]);
    const b = await runDevice(floats.program, images, labels, floats.dir, ["--limit", "300"]);
    // The bits run as alpha * (sum of +-x), the floats as sum of (+-alpha) * x: the last bits differ.
    expect(a.outputs.length).toBe(b.outputs.length);
    let worst = 0;
    for (let i = 0; i < a.outputs.length; i++) {
      const d = Math.abs(a.outputs[i]! - b.outputs[i]!) / Math.max(1, Math.abs(b.outputs[i]!));
      worst = Math.max(worst, d);
    }
    expect(worst).toBeLessThan(1e-5);
    expect(a.predictions.map((p) => [p.index, p.exited, p.label])).toEqual(
      b.predictions.map((p) => [p.index, p.exited, p.label]),
    );
    for (let i = 0; i < a.predictions.length; i++)
      expect(Math.abs(a.predictions[i]!.entropy! - b.predictions[i]!.entropy!)).toBeLessThan(1e-5);
    // The model's constant data shrinks from about 99 KiB to under 5 KiB.
    const size = (dir: string) => readFileSync(join(dir, "dev_model_infer.c"), "utf8").length;
    expect(size(packed.dir)).toBeLessThan(size(floats.dir) / 5);
    expect(packed.generated.report.weightBytes).toBeLessThan(5 * 1024);
    expect(floats.generated.report.weightBytes).toBeGreaterThan(95 * 1024);
  });
});
