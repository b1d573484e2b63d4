import { BundleDownloadError, downloadBundle, maskUrl } from "../core/bundle/download.js";
import { BundleError, MANIFEST_FILE, type Manifest } from "../core/bundle/manifest.js";
import { readBundleArchive, sha256Hex } from "../core/bundle/read.js";
import type { BundleSourceOptions } from "../core/bundle/source.js";
import { readTarGz } from "../core/bundle/tar.js";
import { type KubeClient, KubeError } from "./kube.js";
import { type BundleFacts, bundleFacts } from "./placement.js";
import type { BundleSource } from "./spec.js";

/**
 * Reads a model's bundle from where the spec says (an http(s) URL of a .tar.gz, or a ConfigMap's
 * binaryData) and verifies it before anything is rolled out: every stage file against the
 * manifest, and the manifest's digest against spec.bundle.sha256. Verified bundles are cached by
 * (source, digest), since the digest pins every byte; failures are kept for a short while so a
 * burst of reconciles does not refetch a broken bundle.
 *
 * URLs are downloaded and unpacked by the tiers' own code (core/bundle `downloadBundle` and
 * `readBundleArchive`, with the same size caps, timeout and proxy variables), so the verdict here
 * is the one every pod will reach.
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
  /** Replaces the download of URL sources (default: the tiers' `downloadBundle`). */
  fetch?: BundleFetcher;
  /** Download and unpack limits; the defaults are the tiers' defaults. */
  limits?: BundleSourceOptions;
  /** How long a failed verification is reused before the next fetch. */
  failureTtlMs?: number;
}

const CACHE_SIZE = 64;

export class BundleVerifier {
  private readonly verified = new Map<string, BundleFacts>();
  private readonly failed = new Map<string, { at: number; result: Verification }>();
  private readonly fetch: BundleFetcher;

  constructor(private readonly options: BundleVerifierOptions) {
    this.fetch = options.fetch ?? ((url) => downloadBundle(url, options.limits));
  }

  async verify(namespace: string, source: BundleSource): Promise<Verification> {
    const configMap = `configmap ${namespace}/${source.configMap?.name}[${source.configMap?.key}]`;
    // Messages never show a URL's credentials; the cache tells URLs apart by them.
    const where = source.url ? maskUrl(source.url) : configMap;
    const key = `${source.url ?? configMap}|${source.sha256}`;
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
          // The downloader's messages name the URL already, as the tiers print them.
          message:
            err instanceof BundleDownloadError
              ? err.message
              : `cannot fetch ${where}: ${(err as Error).message}`,
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
      const bundle = await readBundleArchive(bytes, where, this.options.limits);
      if (bundle.digest !== source.sha256) {
        return {
          ok: false,
          reason: "DigestMismatch",
          message: `${where}: ddnn.json hashes to ${bundle.digest} but spec.bundle.sha256 is ${source.sha256}`,
        };
      }
      await verifyViewFiles(bytes, where, bundle.manifest, this.options.limits);
      return { ok: true, facts: bundleFacts(bundle.manifest, bundle.digest) };
    } catch (err) {
      const message =
        err instanceof BundleError || err instanceof Error ? err.message : String(err);
      return { ok: false, reason: "InvalidBundle", message };
    }
  }
}

/**
 * A multi-view bundle's other views (views.devices[1..K-1]) are not stage files, so the archive
 * reader does not look at them; each view's agent would fail on a missing or altered one. Checks
 * them as core/views.ts `readViewsBundle` does, beside ddnn.json in the same archive, with the
 * same messages.
 */
async function verifyViewFiles(
  archive: Uint8Array,
  where: string,
  manifest: Manifest,
  limits: BundleSourceOptions | undefined,
): Promise<void> {
  if (!manifest.views) return;
  const files = await readTarGz(archive, where, limits);
  const nested = [...files.keys()].find(
    (f) => f.endsWith(`/${MANIFEST_FILE}`) && f.split("/").length === 2,
  );
  const prefix = files.has(MANIFEST_FILE) || !nested ? "" : nested.slice(0, -MANIFEST_FILE.length);
  for (const [v, device] of manifest.views.devices.entries()) {
    if (v === 0) continue;
    const label = `${where}[${prefix}${device.file}]`;
    const bytes = files.get(prefix + device.file);
    if (bytes === undefined)
      throw new BundleError(
        label,
        undefined,
        `missing (named by ${MANIFEST_FILE} views.devices[${v}].file)`,
      );
    const actual = sha256Hex(bytes);
    if (actual !== device.sha256)
      throw new BundleError(
        label,
        undefined,
        `sha256 mismatch: ${MANIFEST_FILE} views.devices[${v}].sha256 is ${device.sha256}, the file hashes to ${actual}`,
      );
  }
}
