/**
 * The demo bundle of examples/: three stages (device, edge, server) on Fashion-MNIST-shaped
 * input, with seeded (untrained) weights, so examples/ddnnmodel.yaml can pin a real digest and the
 * operator tests can serve exactly the bundle the example names. Regenerate with
 *   npx vite-node test/operator/write-demo-bundle.ts
 * (the digest only depends on ddnn.json, which is byte-for-byte reproducible).
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type StageModel, stageOnnx } from "../support/onnx-model.js";

export const DEMO_BUNDLE = join(
  fileURLToPath(new URL("../../examples/", import.meta.url)),
  "demo-bundle.tar.gz",
);

const LABELS = [
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
];

const STAGES: (StageModel & { name: string; threshold?: number })[] = [
  {
    name: "device",
    inputName: "image",
    inShape: [1, 28, 28],
    featuresName: "features",
    featureSize: 16,
    logitsName: "logits",
    classes: 10,
    seed: 101,
    threshold: 0.4,
  },
  {
    name: "edge",
    inputName: "features",
    inShape: [16],
    // ONNX forbids one name for an input and an output: the edge hands on "edge_features".
    featuresName: "edge_features",
    featureSize: 16,
    logitsName: "logits",
    classes: 10,
    seed: 202,
    threshold: 0.3,
  },
  {
    name: "server",
    inputName: "edge_features",
    inShape: [16],
    logitsName: "logits",
    classes: 10,
    seed: 303,
  },
];

/** Writes the demo bundle directory; returns its ddnn.json digest. */
export function writeDemoBundle(dir: string): string {
  const stages = STAGES.map((s, i) => {
    const bytes = stageOnnx(s);
    writeFileSync(join(dir, `${s.name}.onnx`), bytes);
    const last = i === STAGES.length - 1;
    return {
      name: s.name,
      file: `${s.name}.onnx`,
      sha256: createHash("sha256").update(bytes).digest("hex"),
      input: s.inputName,
      ...(last ? {} : { features: s.featuresName, exit: { threshold: s.threshold } }),
      logits: s.logitsName,
    };
  });
  const manifest = {
    format: "ddnn-bundle/v1",
    name: "demo-3stage",
    version: "1.0.0",
    labels: LABELS,
    input: { shape: [1, 28, 28], dtype: "float32", scale: 1 / 255, mean: [0], std: [1] },
    stages,
    description: "untrained demo weights: shows the operator and the tiers, not accuracy",
  };
  const text = `${JSON.stringify(manifest, null, 2)}\n`;
  writeFileSync(join(dir, "ddnn.json"), text);
  return createHash("sha256").update(text).digest("hex");
}

/** Packs a directory as a reproducible .tar.gz (sorted, fixed owner and time, no gzip name). */
export function packReproducibly(dir: string, out: string): void {
  const tar = execFileSync("tar", [
    "--sort=name",
    "--owner=0",
    "--group=0",
    "--numeric-owner",
    "--mtime=@0",
    "-cf",
    "-",
    "-C",
    dir,
    ".",
  ]);
  writeFileSync(out, execFileSync("gzip", ["-n", "-9"], { input: tar }));
}
