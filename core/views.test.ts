import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type * as ort from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { loadRuntime } from "./bundle/backend.js";
import { readIdx } from "./dataset/idx.js";
import { argmax, normalizedEntropy } from "./exit.js";
import { preprocess } from "./preprocess.js";
import { aggregateFeatures, aggregateLogits, readViewsBundle } from "./views.js";

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

describe("the shipped multi-view bundle models/fashion-views3", () => {
  const root = fileURLToPath(new URL("..", import.meta.url));
  const bundleDir = join(root, "models", "fashion-views3");
  const evalDir = join(bundleDir, "eval");
  const images = [0, 1, 2].map((v) =>
    join(evalDir, `fashion-mnist-views3-t10k-2000-view${v}-images-idx3-ubyte.gz`),
  );
  const labelsFile = join(evalDir, "fashion-mnist-views3-t10k-2000-labels-idx1-ubyte.gz");

  interface Subset {
    present: number[];
    overall: number;
    stages: { exitRate: number }[];
  }

  /** `python -m trainer evaluate-views --json`, with per-sample answers for every view present. */
  async function pytorch() {
    const file = join(mkdtempSync(join(tmpdir(), "ddnn-views-")), "p.json");
    const { stdout } = await promisify(execFile)(
      "/usr/bin/python3",
      [
        "-m",
        "trainer",
        "evaluate-views",
        "--bundle",
        bundleDir,
        ...images.flatMap((p) => ["--images", p]),
        "--labels",
        labelsFile,
        "--json",
        "--predictions",
        file,
      ],
      { cwd: root, timeout: 300_000 },
    );
    const report = JSON.parse(stdout) as {
      all: Subset;
      missing: { subsets: Subset[] }[];
    };
    return {
      subsets: [report.all, ...report.missing.flatMap((m) => m.subsets)],
      all: JSON.parse(readFileSync(file, "utf8")) as { exitStage: number[]; label: number[] },
    };
  }

  it("answers as the trainer's PyTorch model, every set of views present, on the 2,000 captures", async () => {
    const theirs = pytorch();
    const { bundle, views, deviceBytes } = await readViewsBundle(bundleDir);
    expect(views.count).toBe(3);
    const { manifest } = bundle;
    const { ort: runtime } = await loadRuntime();
    const run = async (bytes: Uint8Array, input: string, x: ort.Tensor) => {
      const session = await runtime.InferenceSession.create(bytes);
      try {
        return await session.run({ [input]: x });
      } finally {
        await session.release();
      }
    };
    const [first, server] = [manifest.stages[0]!, manifest.stages[1]!];
    const classes = manifest.labels.length;
    const labels = (await readIdx(labelsFile)).data;
    const n = labels.length;
    // Each view's device stage once, as its device would run it.
    const device: ort.InferenceSession.OnnxValueMapType[] = [];
    for (const [v, bytes] of deviceBytes.entries()) {
      const pixels = (await readIdx(images[v]!)).data;
      const x = preprocess(manifest.input, pixels, n);
      device.push(
        await run(
          bytes,
          first.input,
          new runtime.Tensor("float32", x, [n, ...manifest.input.shape]),
        ),
      );
    }
    const dims = device[0]![first.features!]!.dims;
    const answers = async (present: readonly number[]) => {
      const pick = (name: string) =>
        device.map((out, v) =>
          present.includes(v) ? (out[name]!.data as Float32Array) : undefined,
        );
      const local = aggregateLogits(views.localAggregation, pick(first.logits));
      const h = aggregateFeatures(views.featureAggregation, pick(first.features!), n);
      const channels = dims[1]! * (views.featureAggregation === "concat" ? views.count : 1);
      const out = await run(
        bundle.stageBytes[1]!,
        server.input,
        new runtime.Tensor("float32", h, [n, channels, ...dims.slice(2)]),
      );
      const serverLogits = out[server.logits]!.data as Float32Array;
      const exitStage: number[] = [];
      const label: number[] = [];
      for (let i = 0; i < n; i++) {
        const here = normalizedEntropy(local, i * classes, classes) < first.exit!.threshold;
        exitStage.push(here ? 0 : 1);
        label.push(argmax(here ? local : serverLogits, i * classes, classes));
      }
      return { exitStage, label };
    };
    const py = await theirs;
    expect(py.subsets.map((s) => s.present)).toEqual([
      [0, 1, 2],
      [0, 1],
      [0, 2],
      [1, 2],
      [0],
      [1],
      [2],
    ]);
    for (const subset of py.subsets) {
      const ours = await answers(subset.present);
      const correct = ours.label.filter((l, i) => l === labels[i]).length / n;
      const local = ours.exitStage.filter((s) => s === 0).length / n;
      // onnxruntime and PyTorch differ in the last bits; a sample on the threshold may flip.
      expect(Math.abs(correct - subset.overall), `views ${subset.present}`).toBeLessThanOrEqual(
        0.001,
      );
      expect(
        Math.abs(local - subset.stages[0]!.exitRate),
        `views ${subset.present}`,
      ).toBeLessThanOrEqual(0.001);
      if (subset.present.length === views.count) {
        let same = 0;
        for (let i = 0; i < n; i++)
          if (ours.exitStage[i] === py.all.exitStage[i] && ours.label[i] === py.all.label[i])
            same++;
        expect(same / n).toBeGreaterThanOrEqual(0.999);
      }
    }
  });
});
