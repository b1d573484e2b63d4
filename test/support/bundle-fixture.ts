import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type StageModel, stageOnnx } from "./onnx-model.js";

export interface FixtureStage extends StageModel {
  name: string;
  threshold?: number;
}

export interface Fixture {
  dir: string;
  manifest: Record<string, unknown> & { stages: Record<string, unknown>[] };
  stages: FixtureStage[];
}

/** Deterministic u8 pixels (a small LCG) for `n` samples of `perSample` values each. */
export function pseudoPixels(n: number, perSample: number, seed: number): Uint8Array {
  let s = seed;
  return Uint8Array.from({ length: n * perSample }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s >>> 24;
  });
}

export function tempDir(prefix = "ddnn-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/**
 * A three-stage model (device, edge, server) on 1x4x4 inputs with 4 classes, whose exits each
 * answer some of pseudoPixels(n, 16, 77): a count put at the wrong tier shows.
 */
export function threeTierStages(): FixtureStage[] {
  return [
    {
      name: "device",
      inputName: "image",
      inShape: [1, 4, 4],
      featuresName: "f0",
      featureSize: 12,
      logitsName: "logits",
      classes: 4,
      seed: 41,
      threshold: 0.6,
    },
    {
      name: "edge",
      inputName: "f0",
      inShape: [12],
      featuresName: "f1",
      featureSize: 8,
      logitsName: "logits",
      classes: 4,
      seed: 43,
      threshold: 0.6,
    },
    { name: "server", inputName: "f1", inShape: [8], logitsName: "logits", classes: 4, seed: 47 },
  ];
}

/** A two-stage model on 1x4x4 inputs with 3 classes: small enough to check by hand. */
export function smallStages(): FixtureStage[] {
  return [
    {
      name: "device",
      inputName: "image",
      inShape: [1, 4, 4],
      featuresName: "features",
      featureSize: 6,
      logitsName: "logits",
      classes: 3,
      seed: 7,
      threshold: 0.5,
    },
    {
      name: "server",
      inputName: "features",
      inShape: [6],
      logitsName: "logits",
      classes: 3,
      seed: 11,
    },
  ];
}

/** Writes ONNX files and a Contract 1 manifest; `edit` may change the manifest before it is written. */
export function writeBundle(
  stages: FixtureStage[],
  options: {
    dir?: string;
    edit?: (m: Fixture["manifest"]) => void;
    input?: Record<string, unknown>;
  } = {},
): Fixture {
  const dir = options.dir ?? tempDir();
  const classes = stages[0]?.classes ?? 2;
  const manifest: Fixture["manifest"] = {
    format: "ddnn-bundle/v1",
    name: "fixture",
    version: "0.0.1",
    labels: Array.from({ length: classes }, (_, i) => `class-${i}`),
    input: {
      shape: stages[0]?.inShape ?? [1],
      dtype: "float32",
      scale: 1 / 255,
      mean: [0.5],
      std: [0.25],
      ...options.input,
    },
    stages: stages.map((s, i) => {
      const file = `${s.name}.onnx`;
      const bytes = stageOnnx(s);
      writeFileSync(join(dir, file), bytes);
      const last = i === stages.length - 1;
      return {
        name: s.name,
        file,
        sha256: createHash("sha256").update(bytes).digest("hex"),
        input: s.inputName,
        ...(last
          ? {}
          : { features: s.featuresName ?? "features", exit: { threshold: s.threshold ?? 0.5 } }),
        logits: s.logitsName,
      };
    }),
    futureField: { kept: true },
  };
  options.edit?.(manifest);
  writeFileSync(join(dir, "ddnn.json"), JSON.stringify(manifest, null, 2));
  return { dir, manifest, stages };
}

/** Packs a bundle directory as .tar.gz with the system tar (optionally under a top-level folder). */
export function packBundle(dir: string, nested = false): string {
  const archive = join(tempDir(), "bundle.tar.gz");
  if (nested) execFileSync("tar", ["-czf", archive, "-C", join(dir, ".."), dir.split("/").pop()!]);
  else execFileSync("tar", ["-czf", archive, "-C", dir, "."]);
  return archive;
}

/** The small two-stage fixture packed as .tar.gz bytes, with the digest a DDNNModel or tier pins. */
export function packedSmallBundle(): { dir: string; archive: Buffer; digest: string } {
  const { dir } = writeBundle(smallStages());
  return {
    dir,
    archive: readFileSync(packBundle(dir)),
    digest: createHash("sha256")
      .update(readFileSync(join(dir, "ddnn.json")))
      .digest("hex"),
  };
}
