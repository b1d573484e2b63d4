import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { tempDir } from "./support/bundle-fixture.js";
import { ddnn, root, trainer } from "./support/run.js";

/**
 * `ddnn eval` (onnxruntime-node) against the trainer's PyTorch evaluation of the same model:
 * the runtime must reproduce what the model designer measured.
 */

interface Predictions {
  exitStage: number[];
  label: number[];
  stageLabels: number[][];
  stageEntropy: number[][];
}

async function both(bundle: string, images: string, labels: string, extra: string[] = []) {
  const dir = tempDir("ddnn-agree-");
  // `ddnn eval` and `trainer evaluate` take the same flags.
  const flags = (predictions: string) => [
    "--bundle",
    bundle,
    "--images",
    images,
    "--labels",
    labels,
    "--json",
    "--predictions",
    join(dir, predictions),
    ...extra,
  ];
  const ours = await ddnn(["eval", ...flags("ts.json")]);
  expect(ours.stderr).toBe("");
  expect(ours.code).toBe(0);
  const theirs = await trainer(["evaluate", ...flags("py.json")]);
  const read = (f: string) => JSON.parse(readFileSync(join(dir, f), "utf8")) as Predictions;
  return {
    ts: JSON.parse(ours.stdout),
    py: JSON.parse(theirs.trim().split("\n").pop()!),
    tsPred: read("ts.json"),
    pyPred: read("py.json"),
  };
}

const synthCases = [
  {
    stages: 1,
    names: "solo",
    tensors: "pixels,unused,scores",
    shape: "3,8,8",
    mean: "0.4,0.5,0.6",
    std: "0.2,0.25,0.3",
    classes: 5,
  },
  {
    stages: 2,
    names: "device,server",
    tensors: "image,features,logits",
    shape: "1,28,28",
    mean: "0.2",
    std: "0.5",
    classes: 10,
  },
  {
    stages: 3,
    names: "cam,gw,cloud",
    tensors: "x,h,y",
    shape: "3,32,32",
    mean: "0.49,0.48,0.45",
    std: "0.25,0.24,0.26",
    classes: 10,
  },
  {
    stages: 4,
    names: "a,b-2,c,d",
    tensors: "in,feat,out",
    shape: "2,16,12",
    mean: "0.1,0.9",
    std: "0.3,0.7",
    classes: 7,
  },
];

describe("ddnn eval agrees with PyTorch", () => {
  for (const c of synthCases) {
    it(`on a random ${c.stages}-stage bundle (${c.names}, input ${c.shape}, ${c.classes} classes)`, async () => {
      const dir = tempDir("ddnn-synth-");
      const images = join(dir, "images.idx.gz");
      const labels = join(dir, "labels.idx.gz");
      await trainer([
        "synth-images",
        "--out-images",
        images,
        "--out-labels",
        labels,
        "--shape",
        c.shape,
        "--count",
        "400",
        "--classes",
        String(c.classes),
        "--seed",
        String(c.stages),
      ]);
      const bundle = join(dir, "bundle");
      await trainer([
        "synth",
        "--out",
        bundle,
        "--stages",
        String(c.stages),
        "--stage-names",
        c.names,
        "--tensor-names",
        c.tensors,
        "--input-shape",
        c.shape,
        "--mean",
        c.mean,
        "--std",
        c.std,
        "--classes",
        String(c.classes),
        "--seed",
        String(c.stages),
        "--calibrate-images",
        images,
      ]);
      const r = await both(bundle, images, labels);
      expect(r.ts.samples).toBe(400);
      expect(r.tsPred.exitStage).toEqual(r.pyPred.exitStage);
      expect(r.tsPred.label).toEqual(r.pyPred.label);
      expect(r.tsPred.stageLabels).toEqual(r.pyPred.stageLabels);
      r.tsPred.stageEntropy.forEach((row, i) => {
        row.forEach((eta, s) => {
          expect(Math.abs(eta - r.pyPred.stageEntropy[i]![s]!)).toBeLessThan(1e-4);
        });
      });
      expect(r.ts).toEqual(r.py);
      if (c.stages > 1) {
        // Every exit answers some samples, so the comparison covers each stage's exit decision.
        for (const s of r.ts.stages) expect(s.exitRate).toBeGreaterThan(0);
      }
    });
  }

  const fashion = "/usr/share/datasets/fashion-mnist";
  for (const model of ["fashion-deep", "fashion-3tier"]) {
    it(`on the shipped ${model} bundle over the full Fashion-MNIST test set`, async () => {
      // scripts/setup.sh installs the data set: missing, it is a broken setup, never a skip.
      const images = join(fashion, "t10k-images-idx3-ubyte.gz");
      const labels = join(fashion, "t10k-labels-idx1-ubyte.gz");
      for (const file of [images, labels])
        if (!existsSync(file))
          throw new Error(
            `${file} is missing: apt-get install dataset-fashion-mnist (scripts/setup.sh installs it)`,
          );
      const r = await both(join(root, "models", model), images, labels);
      const n = r.tsPred.exitStage.length;
      expect(n).toBe(10_000);
      let same = 0;
      for (let i = 0; i < n; i++)
        if (
          r.tsPred.exitStage[i] === r.pyPred.exitStage[i] &&
          r.tsPred.label[i] === r.pyPred.label[i]
        )
          same++;
      expect(same / n).toBeGreaterThanOrEqual(0.999);
      expect(Math.abs(r.ts.overall - r.py.overall)).toBeLessThanOrEqual(0.001);
    });
  }
});
