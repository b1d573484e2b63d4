import * as http from "node:http";
import * as https from "node:https";
import { BundleError } from "../core/bundle/manifest.js";
import { readBundleArchive } from "../core/bundle/read.js";
import { type KubeClient, KubeError } from "./kube.js";
import { type BundleFacts, bundleFacts } from "./placement.js";
import type { BundleSource } from "./spec.js";

/**
 * Reads a model's bundle from where the spec says (an http(s) URL of a .tar.gz, or a ConfigMap's
 * binaryData) and verifies it before anything is rolled out: every stage file against the
 * manifest, and the manifest's digest against spec.bundle.sha256. Verified bundles are cached by
 * (source, digest), since the digest pins every byte; failures are kept for a short while so a
 * burst of reconciles does not refetch a broken bundle.
 */

export type VerifyFailure =
  | "FetchFailed"
  | "ConfigMapNotFound"
  | "InvalidBundle"
  | "DigestMismatch";

export type Verification =
  | { ok: true; facts: BundleFacts }
  | { ok: false; reason: VerifyFailure; message: string };

export type BundleFetcher = (url: string) => Promise<Uint8Array>;

export interface BundleVerifierOptions {
  client: KubeClient;
  fetch?: BundleFetcher;
  /** How long a failed verification is reused before the next fetch. */
  failureTtlMs?: number;
}

// Bundles are held in memory (and unpacked there): keep well inside the operator's memory limit.
const MAX_BUNDLE_BYTES = 64 * 1024 * 1024;
const CACHE_SIZE = 64;

export class BundleVerifier {
  private readonly verified = new Map<string, BundleFacts>();
  private readonly failed = new Map<string, { at: number; result: Verification }>();
  private readonly fetch: BundleFetcher;

  constructor(private readonly options: BundleVerifierOptions) {
    this.fetch = options.fetch ?? fetchBundle;
  }

  async verify(namespace: string, source: BundleSource): Promise<Verification> {
    const where =
      source.url ?? `configmap ${namespace}/${source.configMap?.name}[${source.configMap?.key}]`;
    const key = `${where}|${source.sha256}`;
    const hit = this.verified.get(key);
    if (hit) return { ok: true, facts: hit };
    const miss = this.failed.get(key);
    if (miss && Date.now() - miss.at < (this.options.failureTtlMs ?? 10_000)) return miss.result;
    const result = await this.load(namespace, source, where);
    if (result.ok) {
      this.failed.delete(key);
      this.verified.set(key, result.facts);
      if (this.verified.size > CACHE_SIZE) this.verified.delete(this.verified.keys().next().value!);
    } else {
      this.failed.set(key, { at: Date.now(), result });
      if (this.failed.size > CACHE_SIZE) this.failed.delete(this.failed.keys().next().value!);
    }
    return result;
  }

  private async load(
    namespace: string,
    source: BundleSource,
    where: string,
  ): Promise<Verification> {
    let bytes: Uint8Array;
    if (source.url) {
      try {
        bytes = await this.fetch(source.url);
      } catch (err) {
        return {
          ok: false,
          reason: "FetchFailed",
          message: `cannot fetch ${where}: ${(err as Error).message}`,
        };
      }
    } else {
      const ref = source.configMap!;
      let cm: { binaryData?: Record<string, string>; data?: Record<string, string> };
      try {
        cm = await this.options.client.get({
          apiVersion: "v1",
          plural: "configmaps",
          namespace,
          name: ref.name,
        });
      } catch (err) {
        if (err instanceof KubeError && err.status === 404)
          return {
            ok: false,
            reason: "ConfigMapNotFound",
            message: `ConfigMap ${namespace}/${ref.name} does not exist`,
          };
        return {
          ok: false,
          reason: "FetchFailed",
          message: `cannot read ${where}: ${(err as Error).message}`,
        };
      }
      const b64 = cm.binaryData?.[ref.key];
      if (b64 === undefined) {
        return {
          ok: false,
          reason: "ConfigMapNotFound",
          message: `ConfigMap ${namespace}/${ref.name} has no binaryData key ${ref.key} (keys: ${Object.keys(cm.binaryData ?? {}).join(", ") || "none"})`,
        };
      }
      bytes = new Uint8Array(Buffer.from(b64, "base64"));
    }
    try {
      const bundle = await readBundleArchive(bytes, where);
      if (bundle.digest !== source.sha256) {
        return {
          ok: false,
          reason: "DigestMismatch",
          message: `${where}: ddnn.json hashes to ${bundle.digest} but spec.bundle.sha256 is ${source.sha256}`,
        };
      }
      return { ok: true, facts: bundleFacts(bundle.manifest, bundle.digest) };
    } catch (err) {
      const message =
        err instanceof BundleError || err instanceof Error ? err.message : String(err);
      return { ok: false, reason: "InvalidBundle", message };
    }
  }
}

/**
 * GETs a URL into memory, following redirects. Honors HTTP_PROXY / NO_PROXY for http:// URLs
 * (a plain forward proxy); https:// URLs are fetched directly.
 */
export async function fetchBundle(url: string, redirects = 5): Promise<Uint8Array> {
  const target = new URL(url);
  if (target.protocol !== "http:" && target.protocol !== "https:")
    throw new Error(`unsupported URL scheme ${target.protocol}`);
  const proxy = target.protocol === "http:" ? proxyFor(target) : undefined;
  const options: http.RequestOptions = proxy
    ? {
        hostname: proxy.hostname,
        port: proxy.port || 80,
        path: target.href,
        headers: { Host: target.host },
      }
    : {
        hostname: target.hostname.replace(/^\[|\]$/g, ""),
        port: target.port || (target.protocol === "https:" ? 443 : 80),
        path: target.pathname + target.search,
      };
  const get = target.protocol === "https:" && !proxy ? https.get : http.get;
  return new Promise<Uint8Array>((resolve, reject) => {
    const req = get({ ...options, timeout: 60_000 }, (res) => {
      const code = res.statusCode ?? 0;
      if (code >= 300 && code < 400 && res.headers.location && redirects > 0) {
        res.resume();
        fetchBundle(new URL(res.headers.location, target).href, redirects - 1).then(
          resolve,
          reject,
        );
        return;
      }
      if (code !== 200) {
        res.resume();
        reject(new Error(`HTTP ${code}`));
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (c: Buffer) => {
        size += c.length;
        if (size > MAX_BUNDLE_BYTES)
          req.destroy(new Error(`larger than ${MAX_BUNDLE_BYTES} bytes`));
        else chunks.push(c);
      });
      res.on("end", () => resolve(new Uint8Array(Buffer.concat(chunks))));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error("timed out after 60 s")));
    req.on("error", reject);
  });
}

function proxyFor(target: URL): URL | undefined {
  const raw = process.env.HTTP_PROXY ?? process.env.http_proxy;
  if (!raw) return undefined;
  const noProxy = (process.env.NO_PROXY ?? process.env.no_proxy ?? "")
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  const host = target.hostname.toLowerCase();
  if (
    noProxy.some(
      (n) =>
        n === "*" ||
        host === n.replace(/^\./, "") ||
        host.endsWith(n.startsWith(".") ? n : `.${n}`),
    )
  )
    return undefined;
  return new URL(raw);
}
