/**
 * A pool of inference worker threads with micro-batching. Requests for the same stage range queue
 * together; an idle worker takes up to `maxBatch` of them once the batch is full or the oldest has
 * waited `maxDelayMs`, one request of each client in turn, so one client's burst does not fill the
 * batches while others wait. The queue is bounded (overloaded beyond it), requests past their deadline
 * are answered without computing, and a worker that dies is replaced while the requests in its
 * hands are retried once.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import type { BackendChoice } from "../bundle/backend.js";
import { BundleError } from "../bundle/manifest.js";
import type { VerifiedBundle } from "../bundle/read.js";
import { openStages } from "../bundle/stages.js";
import { ExitPolicy } from "../exit.js";
import { Pipeline, type RangeResult } from "../pipeline.js";
import type { StageWorkerData } from "./stage-worker.js";

export type WorkerRequest =
  | {
      type: "run";
      batch: number;
      from: number;
      to: number;
      ignoreExits: boolean;
      data: Float32Array;
      dims: number[];
    }
  | { type: "crash"; code: number };

export type WorkerReply =
  | { type: "ready"; backend: string | undefined; shapes: Record<number, number[]> }
  | { type: "done"; batch: number; results: RangeResult[] }
  | { type: "failed"; batch: number; message: string }
  | {
      type: "fatal";
      message: string;
      /** Set when the worker could not open a stage of the bundle. */
      bundle?: { file: string; field: string | undefined; detail: string };
    };

export type PoolErrorCode = "overloaded" | "deadline_exceeded" | "internal";

/**
 * Why a request was answered `overloaded` (the ddnn_refusals_total label): its client had its
 * limit of requests in flight (the stage service's per-client cap), the queue was full, or the
 * tier was shutting down.
 */
export const overloadReasons = ["client_limit", "queue_full", "shutting_down"] as const;
export type OverloadReason = (typeof overloadReasons)[number];

export class PoolError extends Error {
  constructor(
    readonly code: PoolErrorCode,
    message: string,
    /** Set for `overloaded`. */
    readonly reason?: OverloadReason,
  ) {
    super(message);
    this.name = "PoolError";
  }
}

export interface PoolOptions {
  readonly bundle: VerifiedBundle;
  /** Stage indices the workers open. */
  readonly only: readonly number[];
  readonly thresholds: readonly (number | undefined)[];
  readonly workers: number;
  readonly maxBatch: number;
  readonly maxDelayMs: number;
  /** Requests waiting beyond this are refused as overloaded. */
  readonly maxQueue: number;
  readonly backend?: BackendChoice;
  /**
   * Run a request on the calling thread when it arrives at an idle pool (no batch running, none
   * queued, `maxDelayMs` 0): a lone request then skips the round trip to a worker thread (~0.3 ms
   * on 2 cores: postMessage, the worker's wake-up, and back). The thread blocks for the stage's
   * compute (~0.1-0.4 ms). Default: on when `maxDelayMs` is 0; a pool with a max delay batches.
   * Only after `INLINE_QUIET_MS` without a request that had to queue: under load (a device
   * flooding) the calling thread, which reads MQTT and answers refusals, computes nothing.
   */
  readonly inline?: boolean;
  /** Called after every batch (for metrics). */
  readonly onBatch?: (info: { size: number; ms: number; from: number }) => void;
  /** Called when a worker dies (for metrics and logs). */
  readonly onWorkerExit?: (info: { worker: number; code: number; inFlight: number }) => void;
}

export interface Job {
  readonly from: number;
  readonly to: number;
  /** One sample, flattened; `dims` has batch 1. */
  readonly data: Float32Array;
  readonly dims: readonly number[];
  /** Unix ms after which the answer is useless. */
  readonly deadline?: number;
  /** Run to the last stage of the range and answer there (the Server Only configuration). */
  readonly ignoreExits?: boolean;
  /**
   * Who asked (an MQTT request's reply topic, an HTTP caller's address): a batch takes one request
   * of each client in turn. Requests without one share one turn.
   */
  readonly client?: string;
}

export interface JobResult {
  readonly result: RangeResult;
  /** Milliseconds between submit and dispatch to a worker. */
  readonly queueMs: number;
  readonly batchSize: number;
}

interface Pending {
  readonly job: Job;
  readonly enqueued: number;
  retried: boolean;
  resolve(r: JobResult): void;
  reject(e: Error): void;
}

interface Slot {
  readonly id: number;
  worker: Worker;
  ready: boolean;
  /** Set once its 'exit' was handled, so an exit is never handled twice. */
  exited: boolean;
  busy?: { batch: number; jobs: Pending[]; started: number; from: number };
}

/** The compiled worker next to this file, or dist/ when this file runs from TypeScript sources. */
function workerFile(): string {
  const here = fileURLToPath(import.meta.url);
  const beside = join(dirname(here), "stage-worker.js");
  if (here.endsWith(".js") && existsSync(beside)) return beside;
  let dir = dirname(here);
  while (!existsSync(join(dir, "package.json"))) dir = dirname(dir);
  const built = join(dir, "dist", "core", "runtime", "stage-worker.js");
  if (!existsSync(built))
    throw new Error(`stage worker not built: ${built} is missing (run npm run build)`);
  return built;
}

/**
 * A lone request runs on the calling thread only when none has queued for this long: a pool that
 * is idle between the batches of a flood would otherwise compute one request at a time on the
 * thread that reads MQTT, while the workers wait and the other devices' requests pile up
 * (test/flood.test.ts measured queue waits of 200 ms instead of 4 ms).
 */
const INLINE_QUIET_MS = 100;

export class WorkerPool {
  private readonly slots: Slot[] = [];
  private readonly queue: Pending[] = [];
  private readonly turns = new Turns();
  private timer: NodeJS.Timeout | undefined;
  private nextBatch = 1;
  private closing = false;
  private restarts = 0;
  /** Milliseconds of finished (or interrupted) batches, summed over workers. */
  private busyMs = 0;
  /** Set once every first worker is ready; before that a worker that exits is not replaced. */
  private started = false;
  backend: string | undefined;
  private shapes: Record<number, number[]> = {};
  /** The stages opened on the calling thread for lone requests (options.inline). */
  private inline: { pipeline: Pipeline; noEarlyExit: ExitPolicy } | undefined;
  private inlineBusy = false;
  /** When a request last had to queue (performance.now()). */
  private queuedAt = Number.NEGATIVE_INFINITY;
  /** Requests that ran on the calling thread (options.inline). */
  inlineRuns = 0;

  private constructor(private readonly options: PoolOptions) {}

  static async start(options: PoolOptions): Promise<WorkerPool> {
    if (options.workers < 1 || options.maxBatch < 1)
      throw new RangeError("a pool needs at least one worker and maxBatch >= 1");
    const pool = new WorkerPool(options);
    // Every worker is heard from before any is stopped: terminating a worker (or exiting the
    // process) while another one is still inside onnxruntime's session creation aborts natively.
    const started = await Promise.allSettled(
      Array.from({ length: options.workers }, (_, i) => pool.spawn(i)),
    );
    const failed = started.find((s): s is PromiseRejectedResult => s.status === "rejected");
    if (failed) {
      // No half-started pool keeps respawning workers behind the caller's back.
      await pool.close(0);
      throw failed.reason;
    }
    pool.started = true;
    if (options.inline ?? options.maxDelayMs === 0) {
      // Without them the workers take every request, as before.
      await pool.openInline().catch(() => {});
    }
    return pool;
  }

  private async openInline(): Promise<void> {
    const { bundle, only, thresholds, backend } = this.options;
    const stages = await openStages(bundle, {
      only: [...only],
      intraOpThreads: 1,
      backend: backend ?? "auto",
    });
    const pipeline = new Pipeline(bundle, stages, new ExitPolicy([...thresholds]));
    // As the workers do for a probe: every stage runs and the last exit answers.
    const noEarlyExit = new ExitPolicy(thresholds.map((t) => (t === undefined ? undefined : 0)));
    this.inline = { pipeline, noEarlyExit };
  }

  /** Stage indices the workers open. */
  get opened(): readonly number[] {
    return this.options.only;
  }

  /** Per-sample input shape of a stage the workers opened (-1 where the model leaves a dimension open). */
  sampleShape(index: number): number[] {
    const shape = this.shapes[index];
    if (!shape) throw new RangeError(`the workers did not open stage ${index}`);
    return shape;
  }

  /** Requests waiting for a worker. */
  get queued(): number {
    return this.queue.length;
  }

  /** Requests being computed right now. */
  get inFlight(): number {
    return (
      this.slots.reduce((n, s) => n + (s.busy?.jobs.length ?? 0), 0) + (this.inlineBusy ? 1 : 0)
    );
  }

  get readyWorkers(): number {
    return this.slots.filter((s) => s.ready).length;
  }

  /**
   * Seconds the workers have spent running batches, summed over workers, batches still running
   * included (so the total only grows); its rate over the number of workers is the utilisation.
   */
  get busySeconds(): number {
    const now = performance.now();
    const running = this.slots.reduce((ms, s) => ms + (s.busy ? now - s.busy.started : 0), 0);
    return (this.busyMs + running) / 1000;
  }

  /** True when a request submitted now would run on the calling thread. */
  private get idleForInline(): boolean {
    return (
      this.inline !== undefined &&
      !this.inlineBusy &&
      !this.closing &&
      this.queue.length === 0 &&
      this.slots.every((s) => !s.busy) &&
      performance.now() - this.queuedAt >= INLINE_QUIET_MS
    );
  }

  private async runInline(job: Job): Promise<JobResult> {
    const { pipeline, noEarlyExit } = this.inline!;
    this.inlineBusy = true;
    this.inlineRuns++;
    const started = performance.now();
    try {
      const [result] = await pipeline.runRange(
        job.from,
        job.to,
        pipeline.tensor(job.data, job.dims),
        job.ignoreExits ? noEarlyExit : pipeline.policy,
      );
      if (!result) throw new PoolError("internal", "worker returned no result for this request");
      return { result, queueMs: 0, batchSize: 1 };
    } catch (err) {
      throw err instanceof PoolError ? err : new PoolError("internal", (err as Error).message);
    } finally {
      const ms = performance.now() - started;
      this.busyMs += ms;
      this.inlineBusy = false;
      this.options.onBatch?.({ size: 1, ms, from: job.from });
      this.pump();
    }
  }

  submit(job: Job): Promise<JobResult> {
    if (this.closing)
      return Promise.reject(new PoolError("overloaded", "shutting down", "shutting_down"));
    if (job.deadline !== undefined && job.deadline <= Date.now()) {
      return Promise.reject(
        new PoolError("deadline_exceeded", "deadline passed before the request was queued"),
      );
    }
    if (this.queue.length >= this.options.maxQueue) {
      return Promise.reject(
        new PoolError(
          "overloaded",
          `queue is full (${this.options.maxQueue} requests waiting)`,
          "queue_full",
        ),
      );
    }
    if (this.idleForInline) return this.runInline(job);
    this.queuedAt = performance.now();
    return new Promise((resolve, reject) => {
      this.queue.push({ job, enqueued: performance.now(), retried: false, resolve, reject });
      this.pump();
    });
  }

  /** Test hook and fault drill: makes one busy (or any) worker exit with `code`. */
  crashOne(code = 1): boolean {
    const slot = this.slots.find((s) => s.busy) ?? this.slots.find((s) => s.ready);
    if (!slot) return false;
    slot.worker.postMessage({ type: "crash", code } satisfies WorkerRequest);
    return true;
  }

  /** Stops taking work, finishes what is queued and in flight (up to `timeoutMs`), then stops the workers. */
  async close(timeoutMs = 10_000): Promise<void> {
    this.closing = true;
    const until = Date.now() + timeoutMs;
    while ((this.queue.length > 0 || this.inFlight > 0) && Date.now() < until) {
      this.pump();
      await new Promise((r) => setTimeout(r, 5));
    }
    clearTimeout(this.timer);
    for (const p of this.queue.splice(0))
      p.reject(new PoolError("internal", "pool closed before the request ran"));
    await Promise.all(
      this.slots.map(async (s) => {
        for (const p of s.busy?.jobs ?? [])
          p.reject(new PoolError("internal", "pool closed while the request ran"));
        s.busy = undefined;
        s.ready = false;
        await s.worker.terminate();
      }),
    );
    const inline = this.inline;
    this.inline = undefined;
    // A run on this thread lasts a stage's compute; its session is released only after it.
    while (this.inlineBusy) await new Promise((r) => setTimeout(r, 1));
    await inline?.pipeline.release();
  }

  private spawn(id: number): Promise<void> {
    const data: StageWorkerData = {
      bundle: this.options.bundle,
      only: [...this.options.only],
      thresholds: [...this.options.thresholds],
      backend: this.options.backend ?? "auto",
    };
    const worker = new Worker(workerFile(), { workerData: data });
    const slot: Slot = { id, worker, ready: false, exited: false };
    this.slots[id] = slot;
    return new Promise((resolve, reject) => {
      worker.on("message", (msg: WorkerReply) => {
        switch (msg.type) {
          case "ready":
            slot.ready = true;
            this.backend = msg.backend;
            this.shapes = msg.shapes;
            this.restarts = 0;
            resolve();
            this.pump();
            break;
          case "fatal":
            reject(
              msg.bundle
                ? new BundleError(msg.bundle.file, msg.bundle.field, msg.bundle.detail)
                : new Error(`inference worker could not start: ${msg.message}`),
            );
            // A replacement that cannot start exits, and its exit schedules the next attempt;
            // at start-up the pool stops every worker itself once all have answered.
            if (this.started) void worker.terminate();
            break;
          case "done":
            this.finish(slot, msg.batch, (p, i) => {
              const result = msg.results[i];
              if (result) p.resolve({ result, queueMs: 0, batchSize: 0 });
              else
                p.reject(new PoolError("internal", "worker returned no result for this request"));
            });
            break;
          case "failed":
            this.finish(slot, msg.batch, (p) => p.reject(new PoolError("internal", msg.message)));
            break;
        }
      });
      worker.on("error", (err) => {
        if (!slot.ready) reject(err);
      });
      worker.on("exit", (code) => {
        if (!slot.ready)
          reject(new Error(`inference worker exited (code ${code}) before it was ready`));
        this.onExit(slot, code);
      });
    });
  }

  private finish(slot: Slot, batch: number, settle: (p: Pending, i: number) => void): void {
    const busy = slot.busy;
    if (!busy || busy.batch !== batch) return;
    slot.busy = undefined;
    const ms = performance.now() - busy.started;
    this.busyMs += ms;
    this.options.onBatch?.({ size: busy.jobs.length, ms, from: busy.from });
    busy.jobs.forEach((p, i) => {
      const queueMs = busy.started - p.enqueued;
      settle(
        {
          ...p,
          resolve: (r) => p.resolve({ ...r, queueMs, batchSize: busy.jobs.length }),
        },
        i,
      );
    });
    this.pump();
  }

  private onExit(slot: Slot, code: number): void {
    if (slot.exited) return;
    slot.exited = true;
    // A first worker that never got ready fails the pool's start instead of being replaced.
    if (!this.started && !slot.ready) return;
    const jobs = slot.busy?.jobs ?? [];
    if (slot.busy) this.busyMs += performance.now() - slot.busy.started;
    slot.busy = undefined;
    slot.ready = false;
    if (this.closing) {
      for (const p of jobs)
        p.reject(
          new PoolError("internal", `inference worker exited (code ${code}) during shutdown`),
        );
      return;
    }
    this.options.onWorkerExit?.({ worker: slot.id, code, inFlight: jobs.length });
    // Requests in a dead worker's hands run again once; a request that kills two workers fails.
    for (const p of jobs.reverse()) {
      if (p.retried)
        p.reject(
          new PoolError(
            "internal",
            `inference worker exited (code ${code}) twice while running this request`,
          ),
        );
      else {
        p.retried = true;
        this.queue.unshift(p);
      }
    }
    // One replacement per exit; a replacement that fails to start exits too and schedules the next.
    const delay = Math.min(5_000, 50 * 2 ** this.restarts++);
    setTimeout(() => {
      if (this.closing) return;
      this.spawn(slot.id).catch(() => {});
    }, delay).unref();
    // Requeued requests may go to another worker that is idle now.
    this.pump();
  }

  private pump(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    for (;;) {
      this.dropExpired();
      const head = this.queue[0];
      if (!head) return;
      const idle = this.slots.find((s) => s.ready && !s.busy);
      if (!idle) return;
      // A batch shares its stage range, exit rule and sample shape.
      const key = batchKey(head.job);
      const same = this.queue.filter((p) => batchKey(p.job) === key);
      const waited = performance.now() - head.enqueued;
      if (
        same.length < this.options.maxBatch &&
        waited < this.options.maxDelayMs &&
        !this.closing
      ) {
        this.timer = setTimeout(() => this.pump(), Math.max(0, this.options.maxDelayMs - waited));
        return;
      }
      const jobs = this.turns.take(same, this.options.maxBatch);
      const taken = new Set(jobs);
      let kept = 0;
      for (const p of this.queue) if (!taken.has(p)) this.queue[kept++] = p;
      this.queue.length = kept;
      this.dispatch(idle, jobs);
    }
  }

  private dropExpired(): void {
    const now = Date.now();
    for (let i = this.queue.length - 1; i >= 0; i--) {
      const p = this.queue[i]!;
      if (p.job.deadline !== undefined && p.job.deadline <= now) {
        this.queue.splice(i, 1);
        p.reject(
          new PoolError(
            "deadline_exceeded",
            "deadline passed while the request waited in the queue",
          ),
        );
      }
    }
  }

  private dispatch(slot: Slot, jobs: Pending[]): void {
    const first = jobs[0]!.job;
    const width = first.data.length;
    const data = new Float32Array(width * jobs.length);
    jobs.forEach((p, i) => {
      data.set(p.job.data, i * width);
    });
    const batch = this.nextBatch++;
    slot.busy = { batch, jobs, started: performance.now(), from: first.from };
    const msg: WorkerRequest = {
      type: "run",
      batch,
      from: first.from,
      to: first.to,
      ignoreExits: first.ignoreExits ?? false,
      data,
      dims: [jobs.length, ...first.dims.slice(1)],
    };
    slot.worker.postMessage(msg, [data.buffer as ArrayBuffer]);
  }
}

/**
 * Round robin over clients, across batches: a batch takes one request of each waiting client in
 * turn, the client served longest ago first (one never served, or back after its queue emptied,
 * before any other; ties in queue order), so a client with a burst queued gets one place per turn
 * like any other. With one client (or none named) it is the queue's order.
 */
export class Turns {
  /** When each waiting client was last given a place (a sequence number). */
  private readonly last = new Map<string | undefined, number>();
  private seq = 0;

  /** Up to `max` of `queued` (in queue order). */
  take<P extends { readonly job: Pick<Job, "client"> }>(queued: readonly P[], max: number): P[] {
    const lanes = new Map<string | undefined, P[]>();
    for (const p of queued) {
      const lane = lanes.get(p.job.client);
      if (lane) lane.push(p);
      else lanes.set(p.job.client, [p]);
    }
    const order = [...lanes].sort(
      ([a], [b]) => (this.last.get(a) ?? -1) - (this.last.get(b) ?? -1),
    );
    const out: P[] = [];
    for (let turn = 0; out.length < max; turn++) {
      let any = false;
      for (const [client, lane] of order) {
        const p = lane[turn];
        if (p === undefined) continue;
        any = true;
        out.push(p);
        this.last.set(client, ++this.seq);
        if (out.length === max) break;
      }
      if (!any) break;
    }
    // Bounded by the clients waiting: one whose queue emptied starts afresh.
    for (const client of this.last.keys()) if (!lanes.has(client)) this.last.delete(client);
    return out;
  }
}

function batchKey(job: Job): string {
  return `${job.from}:${job.to}:${job.ignoreExits ? 1 : 0}:${job.dims.join(",")}`;
}
