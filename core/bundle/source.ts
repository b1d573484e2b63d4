import { mkdir, readdir, readFile, rename, rm, stat, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type DownloadOptions, downloadBundle, maskUrl } from "./download.js";
import { BundleError } from "./manifest.js";
import { readBundle, readBundleArchive, type VerifiedBundle } from "./read.js";
import type { UnpackOptions } from "./tar.js";

/** Where the cache's messages go: the tier's logger. */
export interface CacheLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** Limits on reading a bundle: download size, time and proxies, and the unpacked size. */
export type BundleSourceOptions = DownloadOptions &
  UnpackOptions & {
    /**
     * A directory where a bundle downloaded from a URL is kept once verified, as
     * `<digest>.tar.gz`. With `digest` given, a cached copy of that digest is loaded (and verified
     * again) instead of downloading, so a tier restarts while the network is down.
     */
    cacheDir?: string | undefined;
    /** Where to say that the cache was used, refilled, or could not be written. */
    log?: CacheLog | undefined;
  };

/** How many bundles the cache keeps: the one in use and the one before (a rollback offline). */
export const CACHED_BUNDLES = 2;

/**
 * Opens a bundle from a directory, a .tar.gz path, or an http(s) URL of a .tar.gz, and checks it
 * is the expected one when `digest` (sha256 of ddnn.json) is given. URLs go through the same
 * downloader and limits as the operator's verifier (`downloadBundle`), so a bundle the operator
 * verified is one the tiers can load; with `cacheDir`, through the node's cache first.
 */
export async function openBundleSource(
  source: string,
  digest?: string,
  options: BundleSourceOptions = {},
): Promise<VerifiedBundle> {
  if (!/^https?:\/\//i.test(source)) return expect(await readBundle(source, options), digest);
  const shown = maskUrl(source);
  const cacheDir = options.cacheDir;
  if (cacheDir === undefined) {
    const archive = await downloadBundle(source, options);
    return expect(await readBundleArchive(archive, shown, options), digest, shown);
  }
  if (digest !== undefined) {
    const cached = await fromCache(cacheDir, digest, options);
    if (cached) return cached;
  }
  let archive: Uint8Array;
  try {
    archive = await downloadBundle(source, options);
  } catch (err) {
    if (err instanceof BundleError && digest === undefined)
      err.message += ` (the bundle cache ${cacheDir} is used only with the bundle's digest, which names the copy to trust)`;
    else if (err instanceof BundleError)
      err.message += ` (and the bundle cache ${cacheDir} holds no copy of ${digest})`;
    throw err;
  }
  const bundle = expect(await readBundleArchive(archive, shown, options), digest, shown);
  await intoCache(cacheDir, bundle.digest, archive, options.log);
  return bundle;
}

function expect(bundle: VerifiedBundle, digest: string | undefined, shown = bundle.source) {
  if (digest !== undefined && digest !== bundle.digest) {
    throw new BundleError(
      shown,
      undefined,
      `digest mismatch: expected ${digest}, the bundle's ddnn.json hashes to ${bundle.digest}`,
    );
  }
  return bundle;
}

const cacheFile = (dir: string, digest: string) => join(dir, `${digest}.tar.gz`);

/** The cached copy of `digest`, verified as a download is; a copy that fails is removed. */
async function fromCache(
  dir: string,
  digest: string,
  options: BundleSourceOptions,
): Promise<VerifiedBundle | undefined> {
  const file = cacheFile(dir, digest);
  let archive: Buffer;
  try {
    archive = await readFile(file);
  } catch {
    return undefined;
  }
  try {
    const bundle = expect(await readBundleArchive(archive, file, options), digest, file);
    options.log?.info({ cache: file }, "bundle loaded from the node's cache, not downloaded");
    // Used now: the last to be pruned.
    const now = new Date();
    await utimes(file, now, now).catch(() => {});
    return bundle;
  } catch (err) {
    options.log?.warn(
      { cache: file, err: (err as Error).message },
      "the cached bundle failed verification: removed, downloading it again",
    );
    await rm(file, { force: true });
    return undefined;
  }
}

/**
 * Keeps a verified archive as `<digest>.tar.gz` (written whole, then renamed, so a crash never
 * leaves half a file under that name) and the newest CACHED_BUNDLES only. A cache that cannot be
 * written costs the next offline restart, not this start: a warning, no error.
 */
async function intoCache(
  dir: string,
  digest: string,
  archive: Uint8Array,
  log: CacheLog | undefined,
): Promise<void> {
  const file = cacheFile(dir, digest);
  const temp = join(dir, `.${digest}.${process.pid}.partial`);
  try {
    await mkdir(dir, { recursive: true });
    await writeFile(temp, archive);
    await rename(temp, file);
    log?.info({ cache: file }, "bundle kept in the node's cache");
  } catch (err) {
    await rm(temp, { force: true }).catch(() => {});
    log?.warn(
      { cache: dir, err: (err as Error).message },
      "cannot write the bundle cache: a restart without the network will not find this bundle",
    );
    return;
  }
  try {
    const entries = await Promise.all(
      (await readdir(dir))
        .filter((n) => /^[0-9a-f]{64}\.tar\.gz$/.test(n))
        .map(async (n) => ({ n, at: (await stat(join(dir, n))).mtimeMs })),
    );
    // The one just written first, then the most recently used.
    const current = (e: { n: string }) => (e.n === `${digest}.tar.gz` ? 1 : 0);
    entries.sort((a, b) => current(b) - current(a) || b.at - a.at);
    for (const { n } of entries.slice(CACHED_BUNDLES)) await rm(join(dir, n), { force: true });
  } catch (err) {
    log?.warn({ cache: dir, err: (err as Error).message }, "cannot prune the bundle cache");
  }
}
