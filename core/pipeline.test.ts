import { describe, expect, it } from "vitest";
import {
  type FixtureStage,
  pseudoPixels,
  smallStages,
  writeBundle,
} from "../test/support/bundle-fixture.js";
import { forward } from "../test/support/onnx-model.js";
import { accuracyReport, adaptiveDecisions } from "./evaluation.js";
import { argmax, ExitPolicy, normalizedEntropy } from "./exit.js";
import { isForward, Pipeline } from "./pipeline.js";
import { preprocess } from "./preprocess.js";

function pixels(n: number, perSample: number, seed = 3): Uint8Array {
  return pseudoPixels(n, perSample, seed);
}

function fourStages(): FixtureStage[] {
  return [
    {
      name: "cam",
      inputName: "x",
      inShape: [3, 2, 2],
      featuresName: "h0",
      featureSize: 5,
      logitsName: "y0",
      classes: 4,
      seed: 1,
      threshold: 0.6,
    },
    {
      name: "gw",
      inputName: "h0",
      inShape: [5],
      featuresName: "h1",
      featureSize: 5,
      logitsName: "y1",
      classes: 4,
      seed: 2,
      threshold: 0.5,
    },
    {
      name: "rack",
      inputName: "h1",
      inShape: [5],
      featuresName: "h2",
      featureSize: 4,
      logitsName: "y2",
      classes: 4,
      seed: 3,
      threshold: 0.4,
    },
    { name: "cloud", inputName: "h2", inShape: [4], logitsName: "y3", classes: 4, seed: 4 },
  ];
}

/** Expected per-stage labels and entropies, from the JS reference forward pass. */
function reference(stages: FixtureStage[], x: Float32Array, n: number) {
  const out: { labels: number[]; entropy: number[] }[] = [];
  let input: ArrayLike<number> = x;
  for (const s of stages) {
    const { features, logits } = forward(s, Float32Array.from(input), n);
    out.push({
      labels: Array.from({ length: n }, (_, i) => argmax(logits, i * s.classes, s.classes)),
      entropy: Array.from({ length: n }, (_, i) =>
        normalizedEntropy(logits, i * s.classes, s.classes),
      ),
    });
    if (features) input = features;
  }
  return out;
}

describe("Pipeline", () => {
  it("computes every stage like the reference forward pass, with any names and per-channel mean/std", async () => {
    const stages = fourStages();
    const f = writeBundle(stages, {
      input: { shape: [3, 2, 2], mean: [0.1, 0.5, 0.9], std: [0.2, 0.3, 0.4] },
    });
    const pipeline = await Pipeline.load(f.dir);
    const n = 300;
    const px = pixels(n, 12);
    const full = await pipeline.evaluateAll(px, n, 64);
    const expected = reference(stages, preprocess(pipeline.manifest.input, px, n), n);
    expected.forEach((e, s) => {
      expect(Array.from(full.labels[s]!)).toEqual(e.labels);
      full.entropy[s]!.forEach((eta, i) => {
        expect(eta).toBeCloseTo(e.entropy[i]!, 5);
      });
    });
    await pipeline.release();
  });

  it("answers each sample at its first confident exit, running later stages only for the rest", async () => {
    const f = writeBundle(fourStages(), { input: { shape: [3, 2, 2] } });
    const pipeline = await Pipeline.load(f.dir);
    const n = 500;
    const px = pixels(n, 12, 9);
    const adaptive = await pipeline.infer(px, n);
    const full = await pipeline.evaluateAll(px, n, 100);
    const { exitStage, label } = adaptiveDecisions(full, pipeline.policy);
    expect(adaptive.map((r) => r.stage)).toEqual(Array.from(exitStage));
    expect(adaptive.map((r) => r.label)).toEqual(Array.from(label));
    // Every exit is used by this fixture, so the test says something about each stage.
    expect(new Set(adaptive.map((r) => r.stage)).size).toBe(4);
    for (const r of adaptive) {
      expect(r.entropy).toBeCloseTo(full.entropy[r.stage]![adaptive.indexOf(r)]!, 9);
      r.stageMs.forEach((ms, s) => {
        if (s > r.stage) expect(ms).toBe(0);
        else expect(ms).toBeGreaterThan(0);
      });
    }
    await pipeline.release();
  });

  it("takes threshold overrides by stage name and refuses unknown or final stages", async () => {
    const f = writeBundle(smallStages());
    const all = await Pipeline.load(f.dir, { thresholds: { device: 1 } });
    const none = await Pipeline.load(f.dir, { thresholds: { device: 0 } });
    const px = pixels(50, 16);
    expect((await all.infer(px, 50)).every((r) => r.stage === 0)).toBe(true);
    expect((await none.infer(px, 50)).every((r) => r.stage === 1)).toBe(true);
    await expect(Pipeline.load(f.dir, { thresholds: { edge: 0.3 } })).rejects.toThrow(
      /unknown stage "edge" \(stages: device, server\)/,
    );
    await expect(Pipeline.load(f.dir, { thresholds: { server: 0.3 } })).rejects.toThrow(
      /last stage/,
    );
  });

  it("gives the same answers on the WebAssembly backend as on the native one", async () => {
    const f = writeBundle(fourStages(), {
      input: { shape: [3, 2, 2], mean: [0.1, 0.5, 0.9], std: [0.2, 0.3, 0.4] },
    });
    const native = await Pipeline.load(f.dir, { backend: "native" });
    const wasm = await Pipeline.load(f.dir, { backend: "wasm" });
    expect(native.stages[0]?.runtime.backend).toBe("native");
    expect(wasm.stages[0]?.runtime.backend).toBe("wasm");
    const px = pixels(300, 12, 5);
    const a = await native.infer(px, 300);
    const b = await wasm.infer(px, 300);
    expect(b.map((r) => [r.stage, r.label])).toEqual(a.map((r) => [r.stage, r.label]));
    b.forEach((r, i) => {
      expect(r.entropy).toBeCloseTo(a[i]!.entropy, 5);
    });
  });

  it("runs a stage range and hands unanswered samples on with their features", async () => {
    const f = writeBundle(fourStages(), { input: { shape: [3, 2, 2] } });
    const full = await Pipeline.load(f.dir);
    const device = await Pipeline.load(f.dir, { only: [0] });
    const rest = await Pipeline.load(f.dir, { only: [1, 2, 3] });
    expect(() => device.stage(1)).toThrow(/stage 1 is not loaded here/);
    const n = 200;
    const px = pixels(n, 12, 21);
    const expected = await full.infer(px, n);
    const first = await device.runRange(0, 0, device.inputTensor(px, n));
    const answers = await Promise.all(
      first.map(async (r) => {
        if (!isForward(r)) return r;
        expect(r.forward.dims).toEqual([1, 5]);
        const [next] = await rest.runRange(1, 3, rest.tensor(r.forward.features, r.forward.dims));
        return next!;
      }),
    );
    expect(answers.map((r) => !isForward(r) && [r.stage, r.label])).toEqual(
      expected.map((r) => [r.stage, r.label]),
    );
  });

  it("runs a single-stage bundle", async () => {
    const f = writeBundle(
      [{ name: "only", inputName: "in", inShape: [2, 3], logitsName: "out", classes: 2, seed: 5 }],
      {
        input: { shape: [2, 3], mean: [0, 0.1], std: [1, 2] },
      },
    );
    const pipeline = await Pipeline.load(f.dir);
    const res = await pipeline.infer(pixels(10, 6), 10);
    expect(res.every((r) => r.stage === 0)).toBe(true);
  });
});

describe("accuracyReport", () => {
  it("computes exit rates, per-stage accuracies, Overall and Ideal", () => {
    // 4 samples, 2 stages. Entropy at stage 0: exits for samples 0 and 1 (threshold 0.5).
    const result = {
      samples: 4,
      labels: [Int32Array.of(0, 1, 0, 0), Int32Array.of(0, 0, 2, 1)],
      entropy: [Float64Array.of(0.1, 0.2, 0.9, 0.7), Float64Array.of(0.3, 0.3, 0.3, 0.3)],
      stageMs: [1, 1],
    };
    const truth = [0, 0, 2, 3];
    const r = accuracyReport(result, new ExitPolicy([0.5, undefined]), truth, ["device", "server"]);
    expect(r.stages).toEqual([
      { name: "device", exitRate: 0.5, accuracyAll: 0.25, accuracyExited: 0.5 },
      { name: "server", exitRate: 0.5, accuracyAll: 0.75, accuracyExited: 0.5 },
    ]);
    expect(r.overall).toBe(0.5);
    expect(r.ideal).toBe(0.75);
  });
});
