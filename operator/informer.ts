import { type KubeClient, KubeError, type KubeObject, type Resource } from "./kube.js";

/**
 * A watch cache (list, then watch from the list's resourceVersion), shaped like client-node's
 * cache.ts but it never stops on its own: a 410 Gone relists at once, other errors relist after
 * an exponential backoff, a watch that goes silent longer than the server-side timeout plus a
 * margin is cut and resumed, and an AbortSignal stops it. The delay is injectable for tests.
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

export class Informer<T extends KubeObject = KubeObject> {
  private readonly store = new Map<string, T>();
  private readonly handlers: InformerHandler<T>[] = [];
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
   * Records an object we just wrote (the API server's answer), so a reconcile that runs before
   * the watch event arrives does not write it again. Older versions never replace newer ones.
   */
  upsert(object: T): void {
    const key = objectKey(object);
    const current = this.store.get(key);
    if (current && newer(current, object)) return;
    this.store.set(key, object);
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
          if (event.type === "DELETED") {
            this.store.delete(key);
            this.emit("DELETED", event.object);
            return;
          }
          const current = this.store.get(key);
          if (current && newer(current, event.object)) return;
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

/** True when `a` is a strictly newer version than `b` (resourceVersions are etcd revisions). */
function newer(a: KubeObject, b: KubeObject): boolean {
  const x = a.metadata?.resourceVersion;
  const y = b.metadata?.resourceVersion;
  if (!x || !y || !/^\d+$/.test(x) || !/^\d+$/.test(y)) return false;
  return BigInt(x) > BigInt(y);
}
