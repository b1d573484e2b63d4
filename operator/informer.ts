import { type KubeClient, KubeError, type KubeObject, type Resource } from "./kube.js";

/**
 * A watch cache (list, then watch from the list's resourceVersion), shaped like client-node's
 * cache.ts but it never stops on its own: a 410 Gone relists at once, other errors relist after
 * an exponential backoff, a watch that goes silent longer than the server-side timeout plus a
 * margin is cut and resumed, and an AbortSignal stops it. The delay is injectable for tests.
 *
 * resourceVersions are opaque, as client-go treats them: they are only compared for equality,
 * never ordered. What the watch delivers is the truth, in the order it comes.
 */

export type InformerEvent = "ADDED" | "MODIFIED" | "DELETED";
export type InformerHandler<T> = (event: InformerEvent, object: T) => void;

export interface InformerOptions {
  resource: Omit<Resource, "name" | "subresource">;
  labelSelector?: string;
  /** Server-side watch timeout; the server closes the stream after it and we resume. */
  watchTimeoutSeconds?: number;
  /** Cut a watch that has sent nothing (not even a bookmark) for this long. */
  silenceMs?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  delay?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** A list or watch failed; `retryInMs` is the backoff before the next attempt. */
  onError?: (err: unknown, retryInMs: number) => void;
  /** A watch was resumed or relisted; for metrics. */
  onRestart?: (reason: "closed" | "silent" | "gone" | "error") => void;
}

export function defaultDelay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

export function objectKey(o: KubeObject): string {
  const m = o.metadata ?? {};
  return m.namespace ? `${m.namespace}/${m.name}` : String(m.name);
}

/** A write of ours in flight: the versions the watch delivered for its key meanwhile. */
interface PendingWrite {
  relists: number;
  delivered: Set<string>;
  count: number;
}

export class Informer<T extends KubeObject = KubeObject> {
  private readonly store = new Map<string, T>();
  private readonly handlers: InformerHandler<T>[] = [];
  private readonly writes = new Map<string, PendingWrite>();
  /** Completed lists so far: a write in flight across one cannot tell how its answer compares. */
  private relists = 0;
  private resourceVersion = "";
  private syncedResolve: (() => void) | undefined;
  private readonly syncedPromise: Promise<void>;
  private loop: Promise<void> | undefined;
  hasSynced = false;

  constructor(
    private readonly client: KubeClient,
    private readonly options: InformerOptions,
  ) {
    this.syncedPromise = new Promise((resolve) => {
      this.syncedResolve = resolve;
    });
  }

  on(handler: InformerHandler<T>): this {
    this.handlers.push(handler);
    return this;
  }

  /** Resolves after the first successful list. */
  synced(): Promise<void> {
    return this.syncedPromise;
  }

  get(namespace: string | undefined, name: string): T | undefined {
    return this.store.get(namespace ? `${namespace}/${name}` : name);
  }

  list(filter?: (o: T) => boolean): T[] {
    const all = [...this.store.values()];
    return filter ? all.filter(filter) : all;
  }

  /**
   * Sends a write of one object (`send` resolves with the API server's answer) and keeps the
   * answer in the cache, so a reconcile that runs before the watch delivers it does not write it
   * again. Without ordering resourceVersions, the answer is kept only when it cannot hide a newer
   * version: the watch did not deliver that version while the write was in flight (then the
   * cache holds it or what followed it), and no relist completed meanwhile (its snapshot may be
   * newer than the answer). The watch's next event for the object replaces it, as any event does.
   */
  async write(namespace: string | undefined, name: string, send: () => Promise<T>): Promise<T> {
    const key = namespace ? `${namespace}/${name}` : name;
    let pending = this.writes.get(key);
    if (!pending) {
      pending = { relists: this.relists, delivered: new Set(), count: 0 };
      this.writes.set(key, pending);
    }
    pending.count++;
    try {
      const answer = await send();
      const version = answer.metadata?.resourceVersion;
      if (
        version &&
        objectKey(answer) === key &&
        pending.relists === this.relists &&
        !pending.delivered.has(version)
      )
        this.store.set(key, answer);
      return answer;
    } finally {
      if (--pending.count === 0) this.writes.delete(key);
    }
  }

  start(signal: AbortSignal): void {
    this.loop ??= this.run(signal);
  }

  /** Resolves when the loop has stopped (after the signal aborted). */
  stopped(): Promise<void> {
    return this.loop ?? Promise.resolve();
  }

  private emit(event: InformerEvent, object: T): void {
    for (const h of this.handlers) {
      try {
        h(event, object);
      } catch {
        // A handler's bug must not stop the watch; handlers only enqueue keys.
      }
    }
  }

  private async run(signal: AbortSignal): Promise<void> {
    const delay = this.options.delay ?? defaultDelay;
    const initial = this.options.backoffInitialMs ?? 800;
    const max = this.options.backoffMaxMs ?? 30_000;
    let failures = 0;
    let needList = true;
    while (!signal.aborted) {
      try {
        if (needList) {
          await this.relist();
          needList = false;
        }
        const reason = await this.watchOnce(signal);
        failures = 0;
        if (!signal.aborted) this.options.onRestart?.(reason);
      } catch (err) {
        if (signal.aborted) break;
        if (
          err instanceof KubeError &&
          (err.status === 410 || err.reason === "Expired" || err.reason === "Gone")
        ) {
          this.options.onRestart?.("gone");
          needList = true;
          continue;
        }
        const wait = Math.min(max, initial * 2 ** failures) * (0.8 + 0.4 * Math.random());
        failures++;
        needList = true;
        this.options.onError?.(err, Math.round(wait));
        this.options.onRestart?.("error");
        await delay(wait, signal);
      }
    }
  }

  private async relist(): Promise<void> {
    const list = await this.client.list<T>(this.options.resource, {
      labelSelector: this.options.labelSelector,
    });
    const seen = new Set<string>();
    for (const item of list.items) {
      const key = objectKey(item);
      seen.add(key);
      const old = this.store.get(key);
      this.store.set(key, item);
      if (!old) this.emit("ADDED", item);
      else if (old.metadata?.resourceVersion !== item.metadata?.resourceVersion)
        this.emit("MODIFIED", item);
    }
    for (const [key, old] of [...this.store]) {
      if (!seen.has(key)) {
        this.store.delete(key);
        this.emit("DELETED", old);
      }
    }
    this.resourceVersion = list.metadata.resourceVersion ?? "";
    this.relists++;
    if (!this.hasSynced) {
      this.hasSynced = true;
      this.syncedResolve?.();
    }
  }

  private async watchOnce(signal: AbortSignal): Promise<"closed" | "silent"> {
    const timeoutSeconds = this.options.watchTimeoutSeconds ?? 300;
    const silenceMs = this.options.silenceMs ?? (timeoutSeconds + 60) * 1000;
    const stream = new AbortController();
    const onAbort = () => stream.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    let silent = false;
    let timer = setTimeout(cut, silenceMs);
    function cut() {
      silent = true;
      stream.abort();
    }
    try {
      await this.client.watch<T>(
        this.options.resource,
        {
          resourceVersion: this.resourceVersion,
          allowWatchBookmarks: true,
          timeoutSeconds,
          labelSelector: this.options.labelSelector,
        },
        (event) => {
          clearTimeout(timer);
          timer = setTimeout(cut, silenceMs);
          const rv = event.object.metadata?.resourceVersion;
          if (rv) this.resourceVersion = rv;
          if (event.type === "BOOKMARK") return;
          const key = objectKey(event.object);
          if (rv) this.writes.get(key)?.delivered.add(rv);
          if (event.type === "DELETED") {
            this.store.delete(key);
            this.emit("DELETED", event.object);
            return;
          }
          // The very version we hold already: the event of our own write, nothing new.
          if (rv && this.store.get(key)?.metadata?.resourceVersion === rv) return;
          this.store.set(key, event.object);
          this.emit(event.type === "ADDED" ? "ADDED" : "MODIFIED", event.object);
        },
        stream.signal,
      );
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
    }
    return silent ? "silent" : "closed";
  }
}
