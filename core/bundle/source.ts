import { BundleError } from "./manifest.js";
import { readBundle, readBundleArchive, type VerifiedBundle } from "./read.js";

/**
 * Opens a bundle from a directory, a .tar.gz path, or an http(s) URL of a .tar.gz, and checks it
 * is the expected one when `digest` (sha256 of ddnn.json) is given.
 */
export async function openBundleSource(
  source: string,
  digest?: string,
  timeoutMs = 30_000,
): Promise<VerifiedBundle> {
  let bundle: VerifiedBundle;
  if (/^https?:\/\//i.test(source)) {
    let response: Response;
    try {
      response = await fetch(source, { signal: AbortSignal.timeout(timeoutMs) });
    } catch (err) {
      throw new BundleError(source, undefined, `cannot download (${(err as Error).message})`);
    }
    if (!response.ok)
      throw new BundleError(source, undefined, `download failed: HTTP ${response.status}`);
    bundle = await readBundleArchive(new Uint8Array(await response.arrayBuffer()), source);
  } else {
    bundle = await readBundle(source);
  }
  if (digest !== undefined && digest !== bundle.digest) {
    throw new BundleError(
      source,
      undefined,
      `digest mismatch: expected ${digest}, the bundle's ddnn.json hashes to ${bundle.digest}`,
    );
  }
  return bundle;
}
