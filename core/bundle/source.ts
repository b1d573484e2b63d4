import { type DownloadOptions, downloadBundle, maskUrl } from "./download.js";
import { BundleError } from "./manifest.js";
import { readBundle, readBundleArchive, type VerifiedBundle } from "./read.js";
import type { UnpackOptions } from "./tar.js";

/** Limits on reading a bundle: download size, time and proxies, and the unpacked size. */
export type BundleSourceOptions = DownloadOptions & UnpackOptions;

/**
 * Opens a bundle from a directory, a .tar.gz path, or an http(s) URL of a .tar.gz, and checks it
 * is the expected one when `digest` (sha256 of ddnn.json) is given. URLs go through the same
 * downloader and limits as the operator's verifier (`downloadBundle`), so a bundle the operator
 * verified is one the tiers can load.
 */
export async function openBundleSource(
  source: string,
  digest?: string,
  options: BundleSourceOptions = {},
): Promise<VerifiedBundle> {
  let bundle: VerifiedBundle;
  let shown = source;
  if (/^https?:\/\//i.test(source)) {
    shown = maskUrl(source);
    bundle = await readBundleArchive(await downloadBundle(source, options), shown, options);
  } else {
    bundle = await readBundle(source, options);
  }
  if (digest !== undefined && digest !== bundle.digest) {
    throw new BundleError(
      shown,
      undefined,
      `digest mismatch: expected ${digest}, the bundle's ddnn.json hashes to ${bundle.digest}`,
    );
  }
  return bundle;
}
