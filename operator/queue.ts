/**
 * A work queue keyed by object (namespace/name), shaped like client-go's: a key is processed by
 * one worker at a time (a key added while it is processed runs again afterwards, once), keys
 * added several times before a worker takes them run once, and failures are retried with
 * per-key exponential backoff until a success forgets them.
 */

export interface ReconcileResult {
  /** Process the key again after this many milliseconds (level-based polling, e.g. a failing fetch). */
  requeueAfter?: number;
}

export type Reconciler = (key: string) => Promise<ReconcileResult>;

export interface WorkQueueOptions {
  workers?: number;
  /** First retry delay after a failure; doubles per consecutive failure of the same key. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Called after each processed key (for metrics and tests). */
  onDone?: (
    key: string,
    outcome: "success" | "requeue" | "error",
    ms: number,
    err?: unknown,
  ) => void;
}

export class WorkQueue {
  private readonly queue: string[] = [];
  private readonly queued = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly dirty = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  private waiters: (() => void)[] = [];
  private idleWaiters: (() => void)[] = [];
  private stopped = false;
  private running: Promise<void>[] = [];
  private readonly workers: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;

  constructor(private readonly options: WorkQueueOptions = {}) {
    this.workers = options.workers ?? 2;
    this.baseDelayMs = options.baseDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 5 * 60_000;
  }

  /** Keys waiting (not counting those being processed). */
  depth(): number {
    return this.queue.length;
  }

  add(key: string): void {
    if (this.stopped) return;
    if (this.processing.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.queue.push(key);
    this.wake();
  }

  /** Adds the key after `ms`; an earlier pending addAfter for the same key wins. */
  addAfter(key: string, ms: number): void {
    if (this.stopped) return;
    if (ms <= 0) {
      this.add(key);
      return;
    }
    const at = Date.now() + ms;
    const pending = this.timers.get(key);
    if (pending && pending.at <= at) return;
    if (pending) clearTimeout(pending.timer);
    const timer = setTimeout(() => {
      this.timers.delete(key);
      this.add(key);
    }, ms);
    timer.unref();
    this.timers.set(key, { at, timer });
  }

  /** Backoff for the key's next retry: base * 2^(failures), capped. */
  retryDelay(key: string): number {
    const n = this.failures.get(key) ?? 0;
    return Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** n);
  }

  private addRateLimited(key: string): void {
    const delay = this.retryDelay(key);
    this.failures.set(key, (this.failures.get(key) ?? 0) + 1);
    this.addAfter(key, delay);
  }

  /** True when nothing is queued, in flight or dirty (pending timers do not count). */
  idle(): boolean {
    return this.queue.length === 0 && this.processing.size === 0 && this.dirty.size === 0;
  }

  /** Resolves the next time the queue is idle. */
  whenIdle(): Promise<void> {
    if (this.idle()) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Starts the workers; they run `reconcile` until stop(). */
  run(reconcile: Reconciler): void {
    for (let i = 0; i < this.workers; i++) this.running.push(this.worker(reconcile));
  }

  /** Stops taking keys and waits for the keys in flight to finish. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const { timer } of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    this.wake();
    await Promise.all(this.running);
    this.running = [];
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  private async next(): Promise<string | undefined> {
    for (;;) {
      if (this.stopped) return undefined;
      const key = this.queue.shift();
      if (key !== undefined) {
        this.queued.delete(key);
        return key;
      }
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  private async worker(reconcile: Reconciler): Promise<void> {
    for (;;) {
      const key = await this.next();
      if (key === undefined) return;
      this.processing.add(key);
      const started = performance.now();
      try {
        const result = await reconcile(key);
        this.failures.delete(key);
        if (result.requeueAfter !== undefined) this.addAfter(key, result.requeueAfter);
        this.options.onDone?.(
          key,
          result.requeueAfter === undefined ? "success" : "requeue",
          performance.now() - started,
        );
      } catch (err) {
        this.addRateLimited(key);
        this.options.onDone?.(key, "error", performance.now() - started, err);
      } finally {
        this.processing.delete(key);
        if (this.dirty.delete(key)) this.add(key);
        if (this.idle()) {
          const waiters = this.idleWaiters;
          this.idleWaiters = [];
          for (const w of waiters) w();
        }
      }
    }
  }
}
