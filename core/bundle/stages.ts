import type * as ort from "onnxruntime-node";
import { type BackendChoice, loadRuntime, type Runtime } from "./backend.js";
import { BundleError, MANIFEST_FILE, type StageSpec } from "./manifest.js";
import { bundleFileLabel, readBundle, type VerifiedBundle } from "./read.js";

/** One stage ready to run: its manifest entry and an onnxruntime session. */
export interface Stage {
  /** The onnxruntime build that runs it (native or wasm); tensors must come from runtime.ort. */
  readonly runtime: Runtime;
  readonly index: number;
  readonly spec: StageSpec;
  readonly session: ort.InferenceSession;
  /** Shape of one sample of this stage's input (without the batch dimension). */
  readonly sampleShape: readonly number[];
  readonly last: boolean;
}

export interface StageOptions {
  /** onnxruntime build: native, WebAssembly, or native with a WebAssembly fallback (default). */
  readonly backend?: BackendChoice;
  /** Open only these stage indices (a tier runs part of the model). Default: all. */
  readonly only?: readonly number[];
  /** Threads per session for one operator (onnxruntime intra-op). Default: onnxruntime's choice. */
  readonly intraOpThreads?: number;
}

type Dim = number | string;

/** Opens one onnxruntime session per stage and checks tensor names and shapes against the manifest. */
export async function openStages(
  bundle: VerifiedBundle,
  options: StageOptions = {},
): Promise<Stage[]> {
  const runtime = await loadRuntime(options.backend);
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    graphOptimizationLevel: "all",
    executionMode: "sequential",
    ...(runtime.backend === "wasm" ? { executionProviders: ["wasm"] } : {}),
    ...(options.intraOpThreads === undefined
      ? {}
      : { intraOpNumThreads: options.intraOpThreads, interOpNumThreads: 1 }),
  };
  const stages: Stage[] = [];
  const sessions: ort.InferenceSession[] = [];
  try {
    await openEach(bundle, options, runtime, sessionOptions, stages, sessions);
  } catch (err) {
    // Every session opened so far (the failing stage's too) is released, not left to the GC.
    await Promise.allSettled(sessions.map((s) => s.release()));
    throw err;
  }
  return stages;
}

async function openEach(
  bundle: VerifiedBundle,
  options: StageOptions,
  runtime: Runtime,
  sessionOptions: ort.InferenceSession.SessionOptions,
  stages: Stage[],
  sessions: ort.InferenceSession[],
): Promise<void> {
  const { manifest } = bundle;
  let previousFeatures: readonly Dim[] = ["batch", ...manifest.input.shape];
  for (const [i, spec] of manifest.stages.entries()) {
    if (options.only && !options.only.includes(i)) {
      // Not opened here, so its output shape is unknown: the next stage's input is checked on its own.
      previousFeatures = [];
      continue;
    }
    const file = bundleFileLabel(bundle, spec.file);
    let session: ort.InferenceSession;
    try {
      session = await runtime.ort.InferenceSession.create(bundle.stageBytes[i]!, sessionOptions);
      sessions.push(session);
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
      runtime,
      index: i,
      spec,
      session,
      last,
      sampleShape: sampleShape.map((d) => (typeof d === "number" && d > 0 ? d : -1)),
    });
  }
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
