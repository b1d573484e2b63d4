import * as http from "node:http";
import * as https from "node:https";
import type { KubeConfig } from "@kubernetes/client-node";

/**
 * A small REST client for the handful of calls the operator makes. It takes TLS and credentials
 * from client-node's KubeConfig (kubeconfig files, in-cluster tokens that rotate, exec plugins)
 * but sends requests itself, so every request is one visible HTTP call: no discovery requests,
 * no client-side object rewriting, and server-side apply with the exact body the builders made.
 */

export interface Resource {
  /** `v1` or `group/version`. */
  apiVersion: string;
  plural: string;
  namespace?: string;
  name?: string;
  subresource?: "status";
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    generation?: number;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    ownerReferences?: {
      apiVersion: string;
      kind: string;
      name: string;
      uid: string;
      controller?: boolean;
    }[];
    deletionTimestamp?: string | Date;
    creationTimestamp?: string | Date;
    [key: string]: unknown;
  };
  [key: string]: unknown;
}

export interface KubeList<T = KubeObject> {
  items: T[];
  metadata: { resourceVersion?: string; continue?: string };
}

export interface WatchEvent<T = KubeObject> {
  type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";
  object: T;
}

/** A non-2xx answer; `reason` is the Status reason (NotFound, Conflict, Expired, ...). */
export class KubeError extends Error {
  override name = "KubeError";
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

export function resourcePath(r: Resource): string {
  const base = r.apiVersion.includes("/") ? `/apis/${r.apiVersion}` : `/api/${r.apiVersion}`;
  let path = base;
  if (r.namespace) path += `/namespaces/${encodeURIComponent(r.namespace)}`;
  path += `/${r.plural}`;
  if (r.name) path += `/${encodeURIComponent(r.name)}`;
  if (r.subresource) path += `/${r.subresource}`;
  return path;
}

type Query = Record<string, string | number | boolean | undefined>;

function queryString(q: Query | undefined): string {
  if (!q) return "";
  const parts = Object.entries(q)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

/** Called once per finished request (for metrics). */
export type RequestObserver = (verb: string, code: number) => void;

export class KubeClient {
  private agent: http.Agent | undefined;
  private readonly server: URL;
  constructor(
    private readonly kc: KubeConfig,
    private readonly userAgent: string,
    private readonly observe: RequestObserver = () => {},
    private readonly timeoutMs = 30_000,
  ) {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error("kubeconfig has no current cluster");
    this.server = new URL(cluster.server);
  }

  /** The namespace of the kubeconfig's current context (or of the in-cluster service account). */
  defaultNamespace(): string | undefined {
    const ctx = this.kc.getContextObject(this.kc.getCurrentContext());
    return ctx?.namespace;
  }

  private async options(
    method: string,
    path: string,
    headers: Record<string, string>,
  ): Promise<https.RequestOptions> {
    const opts: https.RequestOptions = {};
    await this.kc.applyToHTTPSOptions(opts);
    if (!this.agent) {
      const secure = this.server.protocol === "https:";
      const tls = {
        ca: opts.ca,
        cert: opts.cert,
        key: opts.key,
        ...(opts.rejectUnauthorized === undefined
          ? {}
          : { rejectUnauthorized: opts.rejectUnauthorized }),
      };
      this.agent = secure
        ? new https.Agent({ keepAlive: true, ...tls })
        : new http.Agent({ keepAlive: true });
    }
    const base = this.server.pathname.replace(/\/$/, "");
    return {
      method,
      protocol: this.server.protocol,
      hostname: this.server.hostname.replace(/^\[|\]$/g, ""),
      port: this.server.port || (this.server.protocol === "https:" ? 443 : 80),
      path: base + path,
      agent: this.agent,
      auth: opts.auth,
      headers: {
        ...(opts.headers as Record<string, string> | undefined),
        "User-Agent": this.userAgent,
        Accept: "application/json",
        ...headers,
      },
    };
  }

  private send(options: https.RequestOptions): typeof https.request {
    return options.protocol === "https:" ? https.request : http.request;
  }

  /** One request; resolves with the parsed JSON body, rejects with a KubeError on non-2xx. */
  async request<T>(
    method: string,
    path: string,
    body?: unknown,
    contentType = "application/json",
  ): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string> = {};
    if (payload !== undefined) {
      headers["Content-Type"] = contentType;
      headers["Content-Length"] = String(Buffer.byteLength(payload));
    }
    const options = await this.options(method, path, headers);
    const verb = `${method} ${path.split("?")[0]!.split("/").slice(0, 3).join("/")}`;
    return new Promise<T>((resolve, reject) => {
      const req = this.send(options)(options, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", reject);
        res.on("end", () => {
          const code = res.statusCode ?? 0;
          this.observe(method, code);
          const text = Buffer.concat(chunks).toString("utf8");
          let json: unknown;
          try {
            json = text === "" ? {} : JSON.parse(text);
          } catch {
            json = undefined;
          }
          if (code >= 200 && code < 300) return resolve(json as T);
          const status = json as { reason?: string; message?: string } | undefined;
          reject(
            new KubeError(
              code,
              status?.reason ?? "Unknown",
              `${verb}: ${code} ${status?.message ?? text.slice(0, 200)}`,
            ),
          );
        });
      });
      req.setTimeout(this.timeoutMs, () => req.destroy(new Error(`${verb}: timed out`)));
      req.on("error", (err) => {
        this.observe(method, 0);
        reject(err);
      });
      if (payload !== undefined) req.write(payload);
      req.end();
    });
  }

  get<T = KubeObject>(r: Resource): Promise<T> {
    return this.request<T>("GET", resourcePath(r));
  }

  list<T = KubeObject>(r: Resource, query?: Query): Promise<KubeList<T>> {
    return this.request<KubeList<T>>("GET", resourcePath(r) + queryString(query));
  }

  create<T = KubeObject>(r: Resource, body: unknown, query?: Query): Promise<T> {
    return this.request<T>("POST", resourcePath(r) + queryString(query), body);
  }

  replace<T = KubeObject>(r: Resource, body: unknown): Promise<T> {
    return this.request<T>("PUT", resourcePath(r), body);
  }

  /** Server-side apply (JSON is YAML, so the apply-patch content type takes it). */
  apply<T = KubeObject>(
    r: Resource,
    body: unknown,
    fieldManager: string,
    force = true,
  ): Promise<T> {
    return this.request<T>(
      "PATCH",
      resourcePath(r) + queryString({ fieldManager, force }),
      body,
      "application/apply-patch+yaml",
    );
  }

  mergePatch<T = KubeObject>(r: Resource, patch: unknown, fieldManager?: string): Promise<T> {
    return this.request<T>(
      "PATCH",
      resourcePath(r) + queryString({ fieldManager }),
      patch,
      "application/merge-patch+json",
    );
  }

  delete(
    r: Resource,
    options: { uid?: string; propagationPolicy?: string } = {},
  ): Promise<unknown> {
    return this.request("DELETE", resourcePath(r), {
      kind: "DeleteOptions",
      apiVersion: "v1",
      propagationPolicy: options.propagationPolicy ?? "Background",
      ...(options.uid ? { preconditions: { uid: options.uid } } : {}),
    });
  }

  /**
   * Streams watch events until the server closes the stream, `signal` aborts, or the stream
   * fails. Resolves on a clean close; rejects on errors (a KubeError for an ERROR event).
   */
  async watch<T = KubeObject>(
    r: Resource,
    query: Query,
    onEvent: (event: WatchEvent<T>) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const options = await this.options(
      "GET",
      resourcePath(r) + queryString({ ...query, watch: true }),
      {},
    );
    return new Promise<void>((resolve, reject) => {
      if (signal.aborted) return resolve();
      const req = this.send(options)(options, (res) => {
        const code = res.statusCode ?? 0;
        this.observe("WATCH", code);
        if (code < 200 || code >= 300) {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            let reason = "Unknown";
            let message = Buffer.concat(chunks).toString("utf8").slice(0, 200);
            try {
              const s = JSON.parse(message) as { reason?: string; message?: string };
              reason = s.reason ?? reason;
              message = s.message ?? message;
            } catch {}
            reject(new KubeError(code, reason, `watch ${resourcePath(r)}: ${code} ${message}`));
          });
          return;
        }
        let buffered = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          buffered += chunk;
          let nl = buffered.indexOf("\n");
          while (nl >= 0) {
            const line = buffered.slice(0, nl).trim();
            buffered = buffered.slice(nl + 1);
            nl = buffered.indexOf("\n");
            if (line === "") continue;
            let event: WatchEvent<T>;
            try {
              event = JSON.parse(line) as WatchEvent<T>;
            } catch {
              req.destroy(new Error(`watch ${resourcePath(r)}: unreadable event`));
              return;
            }
            if (event.type === "ERROR") {
              const s = event.object as { code?: number; reason?: string; message?: string };
              req.destroy(
                new KubeError(
                  s.code ?? 500,
                  s.reason ?? "Unknown",
                  `watch: ${s.message ?? "error event"}`,
                ),
              );
              return;
            }
            onEvent(event);
          }
        });
        res.on("end", () => resolve());
        res.on("error", (err) => (signal.aborted ? resolve() : reject(err)));
        res.on("aborted", () => (signal.aborted ? resolve() : reject(new Error("watch aborted"))));
      });
      const abort = () => req.destroy();
      signal.addEventListener("abort", abort, { once: true });
      req.on("error", (err) => {
        signal.removeEventListener("abort", abort);
        if (signal.aborted) resolve();
        else reject(err);
      });
      req.on("close", () => signal.removeEventListener("abort", abort));
      req.end();
    });
  }

  /** Closes idle keep-alive connections. */
  close(): void {
    this.agent?.destroy();
  }
}
