import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import * as ort from "onnxruntime-node";
import {
  BundleError,
  MANIFEST_FILE,
  type Manifest,
  parseManifest,
  type StageSpec,
} from "./manifest.js";
import { readTarGz } from "./tar.js";

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
export async function readBundle(path: string): Promise<VerifiedBundle> {
  let info: Awaited<ReturnType<typeof stat>>;
  try {
    info = await stat(path);
  } catch {
    throw new BundleError(path, undefined, "no such bundle directory or archive");
  }
  let fetch: (file: string) => Promise<Uint8Array | undefined>;
  let label: (file: string) => string;
  if (info.isDirectory()) {
    fetch = async (file) =>
      readFile(join(path, file)).then(
        (b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength),
        () => undefined,
      );
    label = (file) => join(path, file);
  } else {
    const files = readTarGz(await readFile(path), path);
    const prefix = archivePrefix(files, path);
    fetch = async (file) => files.get(prefix + file);
    label = (file) => `${path}[${prefix}${file}]`;
  }
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
    archive: !info.isDirectory(),
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

/** One stage ready to run: its manifest entry and an onnxruntime session. */
export interface Stage {
  readonly index: number;
  readonly spec: StageSpec;
  readonly session: ort.InferenceSession;
  /** Shape of one sample of this stage's input (without the batch dimension). */
  readonly sampleShape: readonly number[];
  readonly last: boolean;
}

export interface StageOptions {
  /** Threads per session for one operator (onnxruntime intra-op). Default: onnxruntime's choice. */
  readonly intraOpThreads?: number;
}

type Dim = number | string;

/** Opens one onnxruntime session per stage and checks tensor names and shapes against the manifest. */
export async function openStages(
  bundle: VerifiedBundle,
  options: StageOptions = {},
): Promise<Stage[]> {
  const { manifest } = bundle;
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    graphOptimizationLevel: "all",
    executionMode: "sequential",
    ...(options.intraOpThreads === undefined
      ? {}
      : { intraOpNumThreads: options.intraOpThreads, interOpNumThreads: 1 }),
  };
  const stages: Stage[] = [];
  let previousFeatures: readonly Dim[] = ["batch", ...manifest.input.shape];
  for (const [i, spec] of manifest.stages.entries()) {
    const file = bundleFileLabel(bundle, spec.file);
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(bundle.stageBytes[i]!, sessionOptions);
    } catch (err) {
      throw new BundleError(
        file,
        undefined,
        `not a loadable ONNX model (${(err as Error).message.split("\n")[0]})`,
      );
    }
    const last = i === manifest.stages.length - 1;
    const field = `${MANIFEST_FILE} stages[${i}]`;
    if (session.inputNames.length !== 1 || session.inputNames[0] !== spec.input) {
      throw new BundleError(
        file,
        `${field}.input`,
        `manifest says "${spec.input}", the model's inputs are [${session.inputNames.join(", ")}] (a stage has exactly one input)`,
      );
    }
    const wanted = last ? [spec.logits] : [spec.logits, spec.features!];
    const kinds = last ? ["logits"] : ["logits", "features"];
    wanted.forEach((name, k) => {
      if (!session.outputNames.includes(name)) {
        throw new BundleError(
          file,
          `${field}.${kinds[k]}`,
          `manifest says "${name}", the model's outputs are [${session.outputNames.join(", ")}]`,
        );
      }
    });
    const inputMeta = tensorMeta(session.inputMetadata, spec.input);
    if (inputMeta && inputMeta.type !== "float32") {
      throw new BundleError(
        file,
        `${field}.input`,
        `"${spec.input}" is ${inputMeta.type}; stages take float32`,
      );
    }
    const inputShape = inputMeta?.shape ?? [];
    if (inputShape.length > 0)
      checkShape(file, `${field}.input`, spec.input, inputShape, previousFeatures, i);
    const logitsShape = tensorMeta(session.outputMetadata, spec.logits)?.shape ?? [];
    if (logitsShape.length > 0) {
      const classes = logitsShape[logitsShape.length - 1];
      if (
        logitsShape.length !== 2 ||
        (typeof classes === "number" && classes > 0 && classes !== manifest.labels.length)
      ) {
        throw new BundleError(
          file,
          `${field}.logits`,
          `"${spec.logits}" has shape [${logitsShape.join(", ")}], the manifest has ${manifest.labels.length} labels (expected [batch, ${manifest.labels.length}])`,
        );
      }
    }
    const sampleShape = (inputShape.length > 0 ? inputShape : previousFeatures).slice(1);
    if (!last) previousFeatures = tensorMeta(session.outputMetadata, spec.features!)?.shape ?? [];
    stages.push({
      index: i,
      spec,
      session,
      last,
      sampleShape: sampleShape.map((d) => (typeof d === "number" && d > 0 ? d : -1)),
    });
  }
  return stages;
}

function tensorMeta(
  meta: readonly ort.InferenceSession.ValueMetadata[],
  name: string,
): { type: string; shape: readonly Dim[] } | undefined {
  const m = meta.find((v) => v.name === name);
  if (!m?.isTensor) return undefined;
  return { type: m.type, shape: m.shape as readonly Dim[] };
}

function isStatic(d: Dim | undefined): d is number {
  return typeof d === "number" && d > 0;
}

function checkShape(
  file: string,
  field: string,
  name: string,
  actual: readonly Dim[],
  expected: readonly Dim[],
  index: number,
): void {
  const from = index === 0 ? "the manifest's input.shape" : "the previous stage's features";
  const show = (s: readonly Dim[]) => `[${s.join(", ")}]`;
  if (isStatic(actual[0])) {
    throw new BundleError(
      file,
      field,
      `"${name}" has a fixed batch size ${actual[0]}; export it with a dynamic batch axis`,
    );
  }
  if (expected.length > 0 && actual.length !== expected.length) {
    throw new BundleError(
      file,
      field,
      `"${name}" has shape ${show(actual)}, ${from} is ${show(expected)}`,
    );
  }
  for (let d = 1; d < actual.length; d++) {
    if (isStatic(actual[d]) && isStatic(expected[d]) && actual[d] !== expected[d]) {
      throw new BundleError(
        file,
        field,
        `"${name}" has shape ${show(actual)}, ${from} is ${show(expected)}`,
      );
    }
  }
}

/** readBundle + openStages. */
export async function loadBundle(
  path: string,
  options: StageOptions = {},
): Promise<{ bundle: VerifiedBundle; stages: Stage[] }> {
  const bundle = await readBundle(path);
  return { bundle, stages: await openStages(bundle, options) };
}
