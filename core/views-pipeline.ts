/**
 * The horizontal DDNN in one process (docs/bundle-views.md "How a multi-view bundle runs"): each
 * view's stage 0 on its own images, the local aggregate of their exit logits (exit by
 * stages[0].exit), and for the samples that go on, the aggregated features through the later
 * stages. A set of views can be missing: they are left out of the aggregates exactly as the
 * gateway leaves out views that did not come. This is the reference the distributed run matches.
 */
import type * as ort from "onnxruntime-node";
import { openStages } from "./bundle/stages.js";
import { argmax, type ExitPolicy, normalizedEntropy } from "./exit.js";
import {
  exitPolicyFor,
  type FullResult,
  Pipeline,
  type PipelineOptions,
  type SampleResult,
  selectRows,
} from "./pipeline.js";
import {
  aggregateFeatures,
  aggregateLogits,
  readViewsBundle,
  type VerifiedViewsBundle,
  type ViewsLayout,
  viewBundle,
} from "./views.js";

/** What the views present gave for a batch: the aggregated logits and features. */
export interface FusedBatch {
  /** [n, classes], the local aggregate. */
  readonly logits: Float32Array;
  /** The next stage's input, [n, ...]; absent for a one-stage bundle. */
  readonly features?: ort.Tensor;
  /** Milliseconds of the views' stage 0 runs, summed. */
  readonly ms: number;
}

export interface ViewsSampleResult extends SampleResult {
  /** The views fused for this sample, in view order. */
  readonly views: readonly number[];
}

export class ViewsPipeline {
  readonly classes: number;
  readonly samplePixels: number;

  constructor(
    readonly bundle: VerifiedViewsBundle,
    /** One pipeline per view, each with only its own stage 0 open. */
    readonly devices: readonly Pipeline[],
    /** The stages after stage 0 (absent for a one-stage bundle). */
    readonly later: Pipeline | undefined,
    readonly policy: ExitPolicy,
  ) {
    this.classes = bundle.bundle.manifest.labels.length;
    this.samplePixels = bundle.bundle.manifest.input.shape.reduce((a, b) => a * b, 1);
  }

  static async load(path: string, options: PipelineOptions = {}): Promise<ViewsPipeline> {
    const views = await readViewsBundle(path);
    const policy = exitPolicyFor(views.bundle.manifest, options.thresholds);
    const opened: Pipeline[] = [];
    try {
      for (let v = 0; v < views.views.count; v++) {
        const bundle = viewBundle(views, v);
        opened.push(
          new Pipeline(bundle, await openStages(bundle, { ...options, only: [0] }), policy),
        );
      }
      const k = views.bundle.manifest.stages.length;
      const later =
        k > 1
          ? new Pipeline(
              views.bundle,
              await openStages(views.bundle, {
                ...options,
                only: Array.from({ length: k - 1 }, (_, i) => i + 1),
              }),
              policy,
            )
          : undefined;
      return new ViewsPipeline(views, opened, later, policy);
    } catch (err) {
      await Promise.allSettled(opened.map((p) => p.release()));
      throw err;
    }
  }

  get layout(): ViewsLayout {
    return this.bundle.views;
  }

  get manifest() {
    return this.bundle.bundle.manifest;
  }

  /**
   * Stage 0 of every view present on `count` samples (`pixels[v]` is view v's raw u8 images, or
   * undefined where view v is missing), then both aggregates.
   */
  async fuse(pixels: readonly (Uint8Array | undefined)[], count: number): Promise<FusedBatch> {
    const logits: (Float32Array | undefined)[] = [];
    const features: (Float32Array | undefined)[] = [];
    let dims: readonly number[] = [];
    let ms = 0;
    for (let v = 0; v < this.layout.count; v++) {
      const px = pixels[v];
      if (!px) {
        logits.push(undefined);
        features.push(undefined);
        continue;
      }
      const device = this.devices[v]!;
      const out = await device.runStage(0, device.inputTensor(px, count));
      ms += out.ms;
      logits.push(out.logits);
      features.push(out.features?.data as Float32Array | undefined);
      if (out.features) dims = out.features.dims;
    }
    const merged = aggregateLogits(this.layout.localAggregation, logits);
    if (!this.later || features.every((f) => f === undefined)) return { logits: merged, ms };
    const data = aggregateFeatures(this.layout.featureAggregation, features, count);
    const [, channels, ...rest] = dims;
    const shape =
      this.layout.featureAggregation === "concat"
        ? [count, (channels ?? 0) * this.layout.count, ...rest]
        : [count, ...dims.slice(1)];
    return { logits: merged, features: this.later.tensor(data, shape), ms };
  }

  /**
   * Every exit on every sample (the local aggregate as stage 0), in batches: what an evaluation
   * needs; `adaptiveDecisions(result, policy)` gives the adaptive answers.
   */
  async evaluateAll(
    pixels: readonly (Uint8Array | undefined)[],
    count: number,
    batchSize = 256,
  ): Promise<FullResult> {
    const k = this.manifest.stages.length;
    const labels = Array.from({ length: k }, () => new Int32Array(count));
    const entropy = Array.from({ length: k }, () => new Float64Array(count));
    const stageMs = new Array<number>(k).fill(0);
    const per = this.samplePixels;
    for (let start = 0; start < count; start += batchSize) {
      const n = Math.min(batchSize, count - start);
      const fused = await this.fuse(
        pixels.map((p) => p?.subarray(start * per, (start + n) * per)),
        n,
      );
      stageMs[0] = (stageMs[0] as number) + fused.ms;
      this.record(fused.logits, n, start, labels[0]!, entropy[0]!);
      let input = fused.features;
      for (let s = 1; s < k && input; s++) {
        const out = await this.later!.runStage(s, input);
        stageMs[s] = (stageMs[s] as number) + out.ms;
        this.record(out.logits, n, start, labels[s]!, entropy[s]!);
        input = out.features;
      }
    }
    return { samples: count, labels, entropy, stageMs };
  }

  /** Adaptive inference: each sample goes only as far as its exits require. */
  async infer(
    pixels: readonly (Uint8Array | undefined)[],
    count: number,
  ): Promise<ViewsSampleResult[]> {
    const k = this.manifest.stages.length;
    const views = pixels.flatMap((p, v) => (p ? [v] : []));
    const fused = await this.fuse(pixels, count);
    const results: ViewsSampleResult[] = new Array(count);
    const stageMs = Array.from({ length: count }, () => new Array<number>(k).fill(0));
    const rows: number[] = [];
    for (let i = 0; i < count; i++) {
      const entropy = normalizedEntropy(fused.logits, i * this.classes, this.classes);
      const label = argmax(fused.logits, i * this.classes, this.classes);
      stageMs[i]![0] = fused.ms / count;
      if (this.policy.exits(0, entropy)) {
        results[i] = { stage: 0, label, entropy, stageMs: stageMs[i]!, views };
      } else rows.push(i);
    }
    if (rows.length === 0 || !fused.features || !this.later) return results;
    const input = selectRows(this.later.ort, fused.features, rows);
    const later = await this.later.runRange(1, k - 1, input);
    later.forEach((r, j) => {
      const i = rows[j]!;
      r.stageMs.forEach((ms, s) => {
        if (s > 0) stageMs[i]![s] = ms;
      });
      results[i] = {
        stage: r.stage,
        label: r.label,
        entropy: r.entropy,
        stageMs: stageMs[i]!,
        views,
      };
    });
    return results;
  }

  async release(): Promise<void> {
    await Promise.all(
      [...this.devices, ...(this.later ? [this.later] : [])].map((p) => p.release()),
    );
  }

  private record(
    logits: Float32Array,
    n: number,
    start: number,
    labels: Int32Array,
    entropy: Float64Array,
  ): void {
    for (let r = 0; r < n; r++) {
      labels[start + r] = argmax(logits, r * this.classes, this.classes);
      entropy[start + r] = normalizedEntropy(logits, r * this.classes, this.classes);
    }
  }
}
