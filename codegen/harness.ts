/**
 * What the generator's tests and benchmark share: generate and build a bundle's stage with the
 * real compiler, run ddnn-device, run the same stage in onnxruntime, and compare the two.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { readBundle, type VerifiedBundle } from "../core/bundle/read.js";
import { openStages } from "../core/bundle/stages.js";
import { argmax, normalizedEntropy } from "../core/exit.js";
import { preprocess } from "../core/preprocess.js";
import { type Generated, type GenerateOptions, generateC, writeGenerated } from "./generate.js";

const run = promisify(execFile);

export interface BuiltStage {
  readonly bundle: VerifiedBundle;
  readonly generated: Generated;
  readonly dir: string;
  readonly program: string;
}

/** Generates `bundlePath`'s first stage into `dir` and builds ddnn-device with make. */
export async function buildStage(
  bundlePath: string,
  dir: string,
  make: readonly string[] = [],
  options: GenerateOptions = {},
): Promise<BuiltStage> {
  const bundle = await readBundle(bundlePath);
  const generated = generateC(bundle, options);
  await writeGenerated(generated, dir);
  await run("nice", ["make", "-s", "-C", dir, ...make], { maxBuffer: 1 << 24 });
  return { bundle, generated, dir, program: join(dir, "ddnn-device") };
}

export interface DevicePrediction {
  readonly index: number;
  readonly exited: boolean;
  readonly label: number;
  readonly entropy: number | null;
}

export interface DeviceRun {
  readonly table: {
    samples: number;
    threshold: number | null;
    stages: {
      name: string;
      exitRate: number;
      accuracyAll: number;
      accuracyExited: number | null;
    }[];
  };
  readonly predictions: DevicePrediction[];
  /** Per sample: features (when the stage has them), then logits. */
  readonly outputs: Float32Array;
}

/** Runs `ddnn-device --eval` (optionally through a runner such as qemu-arm). */
export async function runDevice(
  program: string,
  images: string,
  labels: string,
  work: string,
  extra: readonly string[] = [],
  runner: readonly string[] = [],
): Promise<DeviceRun> {
  const predictions = join(work, "predictions.jsonl");
  const outputs = join(work, "outputs.f32");
  const args = [
    program,
    "--eval",
    images,
    labels,
    "--json",
    "--predictions",
    predictions,
    "--outputs",
    outputs,
    ...extra,
  ];
  const [cmd, ...rest] = runner.length ? [...runner, ...args] : args;
  const { stdout } = await run(cmd!, rest, { maxBuffer: 1 << 26 });
  const raw = readFileSync(outputs);
  return {
    table: JSON.parse(stdout),
    predictions: readFileSync(predictions, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as DevicePrediction),
    outputs: new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4),
  };
}

/** The first stage's features and logits from onnxruntime, for `count` u8 samples. */
export async function ortOutputs(
  bundle: VerifiedBundle,
  pixels: Uint8Array,
  count: number,
  batch = 500,
): Promise<{ features: Float32Array | undefined; logits: Float32Array }> {
  const [stage] = await openStages(bundle, { only: [0] });
  if (!stage) throw new Error("no stage 0");
  try {
    const { manifest } = bundle;
    const x = preprocess(manifest.input, pixels, count);
    const per = x.length / count;
    const featureParts: Float32Array[] = [];
    const logitParts: Float32Array[] = [];
    for (let i = 0; i < count; i += batch) {
      const n = Math.min(batch, count - i);
      const t = new stage.runtime.ort.Tensor("float32", x.subarray(i * per, (i + n) * per), [
        n,
        ...manifest.input.shape,
      ]);
      const out = await stage.session.run({ [stage.spec.input]: t });
      logitParts.push(Float32Array.from(out[stage.spec.logits]!.data as Float32Array));
      if (!stage.last)
        featureParts.push(Float32Array.from(out[stage.spec.features!]!.data as Float32Array));
    }
    const join32 = (parts: Float32Array[]) => {
      const all = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
      let at = 0;
      for (const p of parts) {
        all.set(p, at);
        at += p.length;
      }
      return all;
    };
    return { features: stage.last ? undefined : join32(featureParts), logits: join32(logitParts) };
  } finally {
    await stage.session.release();
  }
}

export interface Agreement {
  readonly samples: number;
  /** Largest |c - ort|, and largest |c - ort| / |ort| over values with |ort| >= 1e-3. */
  readonly maxAbs: number;
  readonly maxRel: number;
  /** Largest |c - ort| / max(|ort|, 1): the tolerance the tests hold to 1e-4. */
  readonly maxError: number;
  readonly labelMismatches: number;
  /** Samples whose exit decision differs. */
  readonly exitMismatches: number;
  /** Of those, the ones whose onnxruntime entropy lies within 1e-5 of the threshold. */
  readonly nearThreshold: number;
  /** Samples whose onnxruntime entropy lies within 1e-5 of the threshold (whatever they decided). */
  readonly withinBand: number;
  readonly maxEntropyDiff: number;
}

/** Compares ddnn-device's outputs and decisions with onnxruntime's for the same samples. */
export function agreement(
  device: DeviceRun,
  ort: { features: Float32Array | undefined; logits: Float32Array },
  classes: number,
  threshold: number | undefined,
): Agreement {
  const n = device.predictions.length;
  const f = ort.features ? ort.features.length / n : 0;
  const per = f + classes;
  if (device.outputs.length !== per * n)
    throw new Error(`ddnn-device wrote ${device.outputs.length} floats, expected ${per * n}`);
  let maxAbs = 0;
  let maxRel = 0;
  let maxError = 0;
  const check = (c: number, o: number) => {
    const d = Math.abs(c - o);
    if (!(d <= maxAbs)) maxAbs = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
    if (Math.abs(o) >= 1e-3) maxRel = Math.max(maxRel, d / Math.abs(o));
    maxError = Math.max(
      maxError,
      Number.isNaN(d) ? Number.POSITIVE_INFINITY : d / Math.max(Math.abs(o), 1),
    );
  };
  let labelMismatches = 0;
  let exitMismatches = 0;
  let nearThreshold = 0;
  let withinBand = 0;
  let maxEntropyDiff = 0;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < f; j++) check(device.outputs[i * per + j]!, ort.features![i * f + j]!);
    for (let j = 0; j < classes; j++)
      check(device.outputs[i * per + f + j]!, ort.logits[i * classes + j]!);
    const p = device.predictions[i]!;
    const eta = normalizedEntropy(ort.logits, i * classes, classes);
    if (argmax(ort.logits, i * classes, classes) !== p.label) labelMismatches++;
    maxEntropyDiff = Math.max(maxEntropyDiff, Math.abs((p.entropy ?? Number.NaN) - eta));
    const exits = threshold === undefined || eta < threshold;
    const near = threshold !== undefined && Math.abs(eta - threshold) < 1e-5;
    if (near) withinBand++;
    if (exits !== p.exited) {
      exitMismatches++;
      if (near) nearThreshold++;
    }
  }
  return {
    samples: n,
    maxAbs,
    maxRel,
    maxError,
    labelMismatches,
    exitMismatches,
    nearThreshold,
    withinBand,
    maxEntropyDiff,
  };
}
