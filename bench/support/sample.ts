/**
 * The workload the benchmarks send: the shipped evaluation sample run through the device stage,
 * keeping the features of every sample the device would offload (its exit was not confident).
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { packageRoot, shipped } from "../../cli/paths.js";
import { readIdx } from "../../core/dataset/idx.js";
import { isForward, Pipeline } from "../../core/pipeline.js";

export interface Offloaded {
  /** Index of the sample in the evaluation set. */
  readonly index: number;
  readonly features: Float32Array;
  readonly dims: readonly number[];
}

export interface Sample {
  readonly bundlePath: string;
  readonly pipeline: Pipeline;
  readonly count: number;
  readonly truth: Uint8Array;
  /** Samples answered by the device's own exit, with its label. */
  readonly deviceExits: readonly { index: number; label: number }[];
  readonly offloaded: readonly Offloaded[];
  readonly source: string;
}

/** The bundle to benchmark: --bundle, else the shipped models/fashion-deep. */
export function bundlePath(flag: string | undefined): string {
  const path = flag ?? shipped().bundle;
  if (!existsSync(path) || (!path.endsWith(".tar.gz") && !existsSync(join(path, "ddnn.json"))))
    throw new Error(
      `bundle ${path} does not exist (the shipped one is trained by: /usr/bin/python3 -m trainer train --arch deep --epochs 10 --feature-hoyer 1.5 --out models/fashion-deep); pass --bundle DIR`,
    );
  return path;
}

/**
 * The `--tier` flag of offload-rtt and throughput: the server (default) or a gateway, whose
 * benchmarks default to the three-stage `models/fashion-3tier`. `bundle` is --bundle's value.
 */
export function tierUnderTest(
  tier: string,
  bundle: string | undefined,
): { gatewayMode: boolean; bundle: string } {
  if (tier !== "server" && tier !== "gateway") throw new Error(`--tier ${tier}: server or gateway`);
  const gatewayMode = tier === "gateway";
  return {
    gatewayMode,
    bundle: bundlePath(
      bundle ?? (gatewayMode ? join(packageRoot(), "models", "fashion-3tier") : undefined),
    ),
  };
}

/** The name of the bundle's last stage; a gateway needs a middle stage before it. */
export function lastStageOf(pipeline: Pipeline, gatewayMode: boolean): string {
  const stages = pipeline.manifest.stages;
  if (gatewayMode && stages.length < 3)
    throw new Error(
      `--tier gateway needs a bundle of 3 or more stages; ${pipeline.bundle.manifest.name} has ${stages.length}`,
    );
  return stages[stages.length - 1]!.name;
}

export async function loadSample(options: {
  bundle: string;
  images?: string | undefined;
  labels?: string | undefined;
  limit?: number | undefined;
  /** Stages to open in this process (default: all). */
  only?: readonly number[];
}): Promise<Sample> {
  const defaults = shipped();
  const images = await readIdx(options.images ?? defaults.images);
  const labels = await readIdx(options.labels ?? defaults.labels);
  const pipeline = await Pipeline.load(options.bundle, {
    intraOpThreads: 1,
    ...(options.only ? { only: options.only } : {}),
  });
  const total = images.shape[0] ?? 0;
  const count = Math.min(total, options.limit ?? total);
  const per = pipeline.samplePixels;
  const deviceExits: { index: number; label: number }[] = [];
  const offloaded: Offloaded[] = [];
  const batch = 256;
  for (let start = 0; start < count; start += batch) {
    const n = Math.min(batch, count - start);
    const input = pipeline.inputTensor(images.data.subarray(start * per, (start + n) * per), n);
    const results = await pipeline.runRange(0, 0, input);
    results.forEach((r, i) => {
      if (isForward(r))
        offloaded.push({ index: start + i, features: r.forward.features, dims: r.forward.dims });
      else deviceExits.push({ index: start + i, label: r.label });
    });
  }
  return {
    bundlePath: options.bundle,
    pipeline,
    count,
    truth: labels.data.subarray(0, count),
    deviceExits,
    offloaded,
    source: options.images ?? "shipped sample (models/eval)",
  };
}
