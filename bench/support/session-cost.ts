/**
 * The physical floor of a server's inference: onnxruntime's own `session.run` of one stage, timed
 * in this process with nothing else around it (no MQTT, no worker hand-off, no pipeline code), the
 * way the server's workers open it (one intra-op thread, so the run stays on the calling thread
 * and process CPU time is its CPU time). Two regimes, because they differ by a factor of ~3 on
 * these machines: back-to-back calls (a server under load) and calls after 1 ms idle (one request
 * at a time: caches and the core's frequency have gone cold in between).
 */
import { performance } from "node:perf_hooks";
import type { VerifiedBundle } from "../../core/bundle/read.js";
import { openStages } from "../../core/bundle/stages.js";
import { summarize } from "../../core/stats.js";

export interface RunCost {
  readonly batch: number;
  /** CPU time of one call (user + system of this process), microseconds: mean over the calls. */
  readonly cpuUsPerCall: number;
  /** Wall time of one call, microseconds: median. */
  readonly wallUsP50: number;
  readonly calls: number;
}

export interface SessionCost {
  /** Back-to-back, one entry per batch size measured. */
  readonly backToBack: readonly RunCost[];
  /** Batch 1 after `idleMs` of idle before every call. */
  readonly idle: RunCost;
  readonly idleMs: number;
}

export interface SessionCostMeter {
  /** One measurement pass over `batches` (back-to-back) and batch 1 after idle. */
  measure(batches: readonly number[], callsPerBatch?: number): Promise<SessionCost>;
  release(): Promise<void>;
}

/** Opens stage `index` of the bundle once; `inputs` are per-sample inputs of that stage. */
export async function sessionCostMeter(
  bundle: VerifiedBundle,
  index: number,
  inputs: readonly Float32Array[],
  idleMs = 1,
): Promise<SessionCostMeter> {
  const [stage] = await openStages(bundle, { only: [index], intraOpThreads: 1 });
  if (!stage) throw new Error(`bundle has no stage ${index}`);
  const ort = stage.runtime.ort;
  const width = inputs[0]?.length ?? 0;
  const tensorFor = (batch: number, offset: number) => {
    const data = new Float32Array(width * batch);
    for (let i = 0; i < batch; i++) data.set(inputs[(offset + i) % inputs.length]!, i * width);
    return new ort.Tensor("float32", data, [batch, ...stage.sampleShape]);
  };
  const runOne = async (feeds: Record<string, unknown>) => {
    const cpu = process.cpuUsage();
    const t = performance.now();
    await stage.session.run(feeds as Parameters<typeof stage.session.run>[0]);
    const wall = performance.now() - t;
    const used = process.cpuUsage(cpu);
    return { cpuUs: used.user + used.system, wallUs: wall * 1000 };
  };
  const series = async (batch: number, calls: number, pauseMs: number): Promise<RunCost> => {
    const feeds = Array.from({ length: 8 }, (_, k) => ({
      [stage.spec.input]: tensorFor(batch, k * batch),
    }));
    // Warm-up: first calls allocate and pick kernels.
    for (let i = 0; i < 5; i++) await stage.session.run(feeds[i % feeds.length]!);
    let cpu = 0;
    const walls: number[] = [];
    for (let i = 0; i < calls; i++) {
      if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
      const one = await runOne(feeds[i % feeds.length]!);
      cpu += one.cpuUs;
      walls.push(one.wallUs);
    }
    return { batch, cpuUsPerCall: cpu / calls, wallUsP50: summarize(walls).p50, calls };
  };
  return {
    async measure(batches, callsPerBatch = 200) {
      const backToBack: RunCost[] = [];
      for (const b of batches)
        backToBack.push(await series(b, Math.max(20, Math.round(callsPerBatch / Math.sqrt(b))), 0));
      const idle = await series(1, callsPerBatch, idleMs);
      return { backToBack, idle, idleMs };
    },
    release: () => stage.session.release(),
  };
}

/**
 * Pure session.run CPU per sample at a (fractional) mean batch size `m`: the per-call CPU
 * interpolated linearly between the measured batch sizes around `m`, divided by `m`. For a cost
 * of `a + b n` per call of n samples this is exactly the CPU per answer of a server whose batches
 * average `m` samples (a per call, b per sample), whatever the mix of batch sizes.
 */
export function cpuUsPerSampleAt(costs: readonly RunCost[], m: number): number {
  const sorted = [...costs].sort((p, q) => p.batch - q.batch);
  if (sorted.length === 0 || !Number.isFinite(m) || m <= 0) return Number.NaN;
  let lo = sorted[0]!;
  let hi = sorted[sorted.length - 1]!;
  for (const c of sorted) {
    if (c.batch <= m) lo = c;
    if (c.batch >= m) {
      hi = c;
      break;
    }
  }
  if (lo.batch === hi.batch) {
    // Outside the measured range: extrapolate along the nearest segment.
    const i = sorted.indexOf(lo);
    const j = i === 0 ? 1 : i - 1;
    const other = sorted[j];
    if (!other) return lo.cpuUsPerCall / lo.batch;
    const slope = (other.cpuUsPerCall - lo.cpuUsPerCall) / (other.batch - lo.batch);
    return (lo.cpuUsPerCall + slope * (m - lo.batch)) / m;
  }
  const f = (m - lo.batch) / (hi.batch - lo.batch);
  return (lo.cpuUsPerCall + f * (hi.cpuUsPerCall - lo.cpuUsPerCall)) / m;
}

/** Least-squares fit of per-call CPU = perCall + perSample * n over the measured batch sizes. */
export function fitCost(costs: readonly RunCost[]): { perCallUs: number; perSampleUs: number } {
  const n = costs.length;
  const mx = costs.reduce((s, c) => s + c.batch, 0) / n;
  const my = costs.reduce((s, c) => s + c.cpuUsPerCall, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (const c of costs) {
    sxy += (c.batch - mx) * (c.cpuUsPerCall - my);
    sxx += (c.batch - mx) ** 2;
  }
  const perSampleUs = sxx > 0 ? sxy / sxx : Number.NaN;
  return { perCallUs: my - perSampleUs * mx, perSampleUs };
}
