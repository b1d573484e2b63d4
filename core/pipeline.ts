import { performance } from "node:perf_hooks";
import type * as ort from "onnxruntime-node";
import type { Ort } from "./bundle/backend.js";
import type { Manifest } from "./bundle/manifest.js";
import type { VerifiedBundle } from "./bundle/read.js";
import { loadBundle, type Stage, type StageOptions } from "./bundle/stages.js";
import { ConfigError } from "./config.js";
import { argmax, ExitPolicy, normalizedEntropy } from "./exit.js";
import { preprocess } from "./preprocess.js";
import type { ExitAnswer } from "./wire/frame.js";

/** What one stage produced for a batch. */
export interface StageOutput {
  /** [n, classes] row-major. */
  readonly logits: Float32Array;
  /** The features tensor for the next stage; absent on the last stage. */
  readonly features?: ort.Tensor;
  /** Wall time of the session run, milliseconds. */
  readonly ms: number;
}

/** The adaptive answer for one sample. */
export interface SampleResult {
  /** Index of the stage whose exit answered. */
  readonly stage: number;
  readonly label: number;
  /** Normalized entropy at the answering exit. */
  readonly entropy: number;
  /** Milliseconds spent per stage on this sample (batch time divided by batch size); 0 where not run. */
  readonly stageMs: readonly number[];
  /** The answer of every exit this range ran on the sample, in stage order (a probe reports them all). */
  readonly exits?: readonly ExitAnswer[];
}

/** A sample answered in a stage range, or handed on to the next stage with its features. */
export type RangeResult =
  | SampleResult
  | {
      /** The last stage run here. */
      readonly stage: number;
      readonly forward: { readonly features: Float32Array; readonly dims: readonly number[] };
      /** The best answer so far (the exit of stage `stage`), for a device that must answer alone. */
      readonly label: number;
      readonly entropy: number;
      readonly stageMs: readonly number[];
      readonly exits?: readonly ExitAnswer[];
    };

export function isForward(r: RangeResult): r is Extract<RangeResult, { forward: unknown }> {
  return "forward" in r;
}

/** Every stage run on every sample: what an evaluation needs (Local accuracy, Ideal accuracy). */
export interface FullResult {
  readonly samples: number;
  /** Per stage: argmax label per sample. */
  readonly labels: readonly Int32Array[];
  /** Per stage: normalized entropy per sample. */
  readonly entropy: readonly Float64Array[];
  /** Per stage: total milliseconds over all batches. */
  readonly stageMs: readonly number[];
}

export interface PipelineOptions extends StageOptions {
  /** Threshold overrides by stage name. */
  readonly thresholds?: Readonly<Record<string, number>>;
}

/** Thresholds from the manifest with overrides by stage name; unknown names are an error. */
export function exitPolicyFor(
  manifest: Manifest,
  overrides: Readonly<Record<string, number>> = {},
): ExitPolicy {
  const names = manifest.stages.map((s) => s.name);
  for (const name of Object.keys(overrides)) {
    const i = names.indexOf(name);
    if (i === -1) throw new ConfigError(`unknown stage "${name}" (stages: ${names.join(", ")})`);
    if (i === names.length - 1)
      throw new ConfigError(
        `stage "${name}" is the last stage; it always answers and has no threshold`,
      );
  }
  return new ExitPolicy(
    manifest.stages.map((s, i) =>
      i === names.length - 1 ? undefined : (overrides[s.name] ?? s.exit?.threshold),
    ),
  );
}

/** All stages of a bundle in one process, batched, with the DDNN exit rule. */
export class Pipeline {
  readonly classes: number;
  readonly samplePixels: number;
  /** The onnxruntime module the stages were opened with (native or wasm). */
  readonly ort: Ort;

  constructor(
    readonly bundle: VerifiedBundle,
    readonly stages: readonly Stage[],
    readonly policy: ExitPolicy,
  ) {
    this.classes = bundle.manifest.labels.length;
    this.samplePixels = bundle.manifest.input.shape.reduce((a, b) => a * b, 1);
    const first = stages[0];
    if (!first) throw new RangeError("a pipeline needs at least one loaded stage");
    this.ort = first.runtime.ort;
  }

  static async load(path: string, options: PipelineOptions = {}): Promise<Pipeline> {
    const { bundle, stages } = await loadBundle(path, options);
    return new Pipeline(bundle, stages, exitPolicyFor(bundle.manifest, options.thresholds));
  }

  get manifest(): Manifest {
    return this.bundle.manifest;
  }

  /** Stage 0's input tensor for `count` samples of raw u8 pixels. */
  inputTensor(pixels: Uint8Array, count: number): ort.Tensor {
    return this.tensor(preprocess(this.manifest.input, pixels, count), [
      count,
      ...this.manifest.input.shape,
    ]);
  }

  /** A float32 tensor made by the onnxruntime build that runs the stages. */
  tensor(data: Float32Array, dims: readonly number[]): ort.Tensor {
    return new this.ort.Tensor("float32", data, dims);
  }

  /** The loaded stage with this index; throws when this process did not open it. */
  stage(index: number): Stage {
    const stage = this.stages.find((s) => s.index === index);
    if (!stage) throw new RangeError(`stage ${index} is not loaded here`);
    return stage;
  }

  /** Runs one stage on a batch. */
  async runStage(index: number, input: ort.Tensor): Promise<StageOutput> {
    const stage = this.stage(index);
    const started = performance.now();
    const out = await stage.session.run({ [stage.spec.input]: input });
    const ms = performance.now() - started;
    const logitsTensor = out[stage.spec.logits];
    const n = input.dims[0] ?? 0;
    if (logitsTensor?.type !== "float32" || logitsTensor.size !== n * this.classes) {
      throw new Error(
        `stage ${stage.spec.name}: output "${stage.spec.logits}" must be float32 [${n}, ${this.classes}], got ${logitsTensor?.type} [${logitsTensor?.dims.join(", ")}]`,
      );
    }
    let features: ort.Tensor | undefined;
    if (!stage.last) {
      features = out[stage.spec.features!];
      if (features?.type !== "float32" || features.dims[0] !== n) {
        throw new Error(
          `stage ${stage.spec.name}: output "${stage.spec.features}" must be float32 with batch ${n}`,
        );
      }
    }
    return { logits: logitsTensor.data as Float32Array, ...(features ? { features } : {}), ms };
  }

  /** Adaptive inference from raw pixels through every stage. */
  async infer(pixels: Uint8Array, count: number): Promise<SampleResult[]> {
    const results = await this.runRange(
      0,
      this.manifest.stages.length - 1,
      this.inputTensor(pixels, count),
    );
    return results as SampleResult[];
  }

  /**
   * Adaptive inference over stages `from..to` (a tier's share of the model): each sample goes only
   * as far as its exits require. Samples still unanswered after `to` (not the last stage) come back
   * with the features to send to stage `to + 1`.
   */
  async runRange(
    from: number,
    to: number,
    input: ort.Tensor,
    policy: ExitPolicy = this.policy,
  ): Promise<RangeResult[]> {
    const count = input.dims[0] ?? 0;
    const results: (RangeResult | undefined)[] = new Array(count);
    const stageMs = Array.from({ length: count }, () =>
      new Array<number>(this.manifest.stages.length).fill(0),
    );
    const exits = Array.from({ length: count }, (): ExitAnswer[] => []);
    let rows = Array.from({ length: count }, (_, i) => i);
    let current = input;
    for (let index = from; index <= to && rows.length > 0; index++) {
      const out = await this.runStage(index, current);
      const perSample = out.ms / rows.length;
      const remaining: number[] = [];
      const keep: number[] = [];
      const guesses: { label: number; entropy: number }[] = [];
      rows.forEach((sample, r) => {
        (stageMs[sample] as number[])[index] = perSample;
        const entropy = normalizedEntropy(out.logits, r * this.classes, this.classes);
        const label = argmax(out.logits, r * this.classes, this.classes);
        (exits[sample] as ExitAnswer[]).push({ stage: index, label, entropy });
        if (policy.exits(index, entropy)) {
          results[sample] = {
            stage: index,
            label,
            entropy,
            stageMs: stageMs[sample] as number[],
            exits: exits[sample] as ExitAnswer[],
          };
        } else {
          remaining.push(sample);
          keep.push(r);
          guesses.push({ label, entropy });
        }
      });
      if (remaining.length > 0 && out.features) {
        current = selectRows(this.ort, out.features, keep);
        if (index === to) {
          const width = (current.data as Float32Array).length / remaining.length;
          const data = current.data as Float32Array;
          remaining.forEach((sample, r) => {
            results[sample] = {
              stage: index,
              forward: {
                features: data.slice(r * width, (r + 1) * width),
                dims: [1, ...current.dims.slice(1)],
              },
              ...(guesses[r] as { label: number; entropy: number }),
              stageMs: stageMs[sample] as number[],
              exits: exits[sample] as ExitAnswer[],
            };
          });
        }
      }
      rows = remaining;
    }
    return results as RangeResult[];
  }

  /** Runs every stage on every sample, in batches of `batchSize`. */
  async evaluateAll(pixels: Uint8Array, count: number, batchSize = 256): Promise<FullResult> {
    const k = this.stages.length;
    const labels = Array.from({ length: k }, () => new Int32Array(count));
    const entropy = Array.from({ length: k }, () => new Float64Array(count));
    const stageMs = new Array<number>(k).fill(0);
    for (let start = 0; start < count; start += batchSize) {
      const n = Math.min(batchSize, count - start);
      let input = this.inputTensor(
        pixels.subarray(start * this.samplePixels, (start + n) * this.samplePixels),
        n,
      );
      for (const stage of this.stages) {
        const out = await this.runStage(stage.index, input);
        stageMs[stage.index] = (stageMs[stage.index] as number) + out.ms;
        const stageLabels = labels[stage.index] as Int32Array;
        const stageEntropy = entropy[stage.index] as Float64Array;
        for (let r = 0; r < n; r++) {
          stageLabels[start + r] = argmax(out.logits, r * this.classes, this.classes);
          stageEntropy[start + r] = normalizedEntropy(out.logits, r * this.classes, this.classes);
        }
        if (out.features) input = out.features;
      }
    }
    return { samples: count, labels, entropy, stageMs };
  }

  async release(): Promise<void> {
    await Promise.all(this.stages.map((s) => s.session.release()));
  }
}

/** Copies the given rows of a float32 tensor into a new, smaller batch. */
export function selectRows(runtime: Ort, tensor: ort.Tensor, rows: readonly number[]): ort.Tensor {
  const [n, ...rest] = tensor.dims;
  const data = tensor.data as Float32Array;
  const width = n ? data.length / n : 0;
  if (rows.length === n) return tensor;
  const out = new Float32Array(rows.length * width);
  rows.forEach((row, i) => {
    out.set(data.subarray(row * width, (row + 1) * width), i * width);
  });
  return new runtime.Tensor("float32", out, [rows.length, ...rest]);
}
