import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { BundleError, MANIFEST_FILE, type Manifest, parseManifest } from "./manifest.js";
import { readTarGz, type UnpackOptions } from "./tar.js";

/** A bundle whose manifest parsed and whose every file matched its sha256. */
export interface VerifiedBundle {
  /** Where it came from (directory or archive path), for messages. */
  readonly source: string;
  readonly manifest: Manifest;
  /** sha256 (hex) of the exact bytes of ddnn.json; it pins the whole bundle. */
  readonly digest: string;
  readonly manifestBytes: Uint8Array;
  /** ONNX bytes per stage, in manifest order. */
  readonly stageBytes: readonly Uint8Array[];
  /** True when the bundle was read from a .tar.gz. */
  readonly archive: boolean;
}

/** How messages name a file of the bundle: `dir/file` or `archive.tar.gz[file]`. */
export function bundleFileLabel(
  bundle: Pick<VerifiedBundle, "source" | "archive">,
  file: string,
): string {
  return bundle.archive ? `${bundle.source}[${file}]` : join(bundle.source, file);
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Reads a bundle directory or .tar.gz, validates the manifest and verifies every digest. */
export async function readBundle(
  path: string,
  options: UnpackOptions = {},
): Promise<VerifiedBundle> {
  let info: Awaited<ReturnType<typeof stat>>;
  try {
    info = await stat(path);
  } catch {
    throw new BundleError(path, undefined, "no such bundle directory or archive");
  }
  if (!info.isDirectory()) return readBundleArchive(await readFile(path), path, options);
  return verify(
    path,
    false,
    (file) =>
      readFile(join(path, file)).then(
        (b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength),
        () => undefined,
      ),
    (file) => join(path, file),
  );
}

/**
 * Reads a bundle from the bytes of a .tar.gz (as fetched from a URL or a ConfigMap), refusing
 * one that unpacks to more than `options.maxUnpackedBytes` (default 256 MiB).
 */
export async function readBundleArchive(
  archive: Uint8Array,
  source: string,
  options: UnpackOptions = {},
): Promise<VerifiedBundle> {
  const files = await readTarGz(archive, source, options);
  const prefix = archivePrefix(files, source);
  return verify(
    source,
    true,
    async (file) => files.get(prefix + file),
    (file) => `${source}[${prefix}${file}]`,
  );
}

async function verify(
  path: string,
  archive: boolean,
  fetch: (file: string) => Promise<Uint8Array | undefined>,
  label: (file: string) => string,
): Promise<VerifiedBundle> {
  const manifestBytes = await fetch(MANIFEST_FILE);
  if (manifestBytes === undefined)
    throw new BundleError(label(MANIFEST_FILE), undefined, "missing");
  const manifest = parseManifest(manifestBytes, label(MANIFEST_FILE));
  const stageBytes: Uint8Array[] = [];
  for (const [i, stage] of manifest.stages.entries()) {
    const bytes = await fetch(stage.file);
    if (bytes === undefined) {
      throw new BundleError(
        label(stage.file),
        undefined,
        `missing (named by ${MANIFEST_FILE} stages[${i}].file)`,
      );
    }
    const actual = sha256Hex(bytes);
    if (actual !== stage.sha256) {
      throw new BundleError(
        label(stage.file),
        undefined,
        `sha256 mismatch: ${MANIFEST_FILE} stages[${i}].sha256 is ${stage.sha256}, the file hashes to ${actual}`,
      );
    }
    stageBytes.push(bytes);
  }
  return {
    source: path,
    manifest,
    digest: sha256Hex(manifestBytes),
    manifestBytes,
    stageBytes,
    archive,
  };
}

function archivePrefix(files: Map<string, Uint8Array>, path: string): string {
  if (files.has(MANIFEST_FILE)) return "";
  const nested = [...files.keys()].filter(
    (f) => f.endsWith(`/${MANIFEST_FILE}`) && f.split("/").length === 2,
  );
  if (nested.length === 1) return nested[0]!.slice(0, -MANIFEST_FILE.length);
  throw new BundleError(
    basename(path),
    undefined,
    nested.length > 1
      ? `archive holds several ${MANIFEST_FILE} files (${nested.join(", ")})`
      : `archive has no ${MANIFEST_FILE} at its root or in a single top-level folder`,
  );
}
