/**
 * Multi-view (horizontal) bundles, docs/bundle-views.md: K end devices each run their own stage 0
 * on their own view of one scene; a local aggregator merges their exit logits (and answers when
 * stages[0].exit says so), a feature aggregator merges their features into stages[1]'s input.
 *
 * The aggregation is defined in float32 so every runtime gets the same bits as the trainer
 * (trainer/views_model.py): `max` is the elementwise maximum over the views present; `avg` adds
 * the views present in view order, rounding each sum to float32, and divides by their count;
 * `concat` lays the views out along the channel axis (axis 1 of [N, C, ...]) in view order, a
 * missing view's slot all zeros.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import {
  BundleError,
  type FeatureAggregation,
  type LocalAggregation,
  MANIFEST_FILE,
  type Manifest,
} from "./bundle/manifest.js";
import { readBundle, sha256Hex, type VerifiedBundle } from "./bundle/read.js";
import { readTarGz, type UnpackOptions } from "./bundle/tar.js";

/** A bundle's views: its `views` block, or one view (stage 0 on one device) without one. */
export interface ViewsLayout {
  readonly count: number;
  readonly localAggregation: LocalAggregation;
  readonly featureAggregation: FeatureAggregation;
  /** Stage 0's file per view, view order; devices[0] is stages[0]. */
  readonly devices: readonly { readonly file: string; readonly sha256: string }[];
}

/** The views of a manifest; every bundle without a views block means K = 1. */
export function viewsOf(manifest: Manifest): ViewsLayout {
  if (manifest.views) return manifest.views;
  const first = manifest.stages[0]!;
  // With one view, max and avg are the identity, so either name describes a K = 1 bundle.
  return {
    count: 1,
    localAggregation: "max",
    featureAggregation: "max",
    devices: [{ file: first.file, sha256: first.sha256 }],
  };
}

/** A verified bundle plus every view's stage 0 bytes, each checked against its sha256. */
export interface VerifiedViewsBundle {
  readonly bundle: VerifiedBundle;
  readonly views: ViewsLayout;
  /** Stage 0's ONNX bytes per view, view order (view 0's are bundle.stageBytes[0]). */
  readonly deviceBytes: readonly Uint8Array[];
}

/**
 * readBundle, then every `views.devices[v].file` read from the same directory or archive and
 * checked against its sha256; a missing or altered view file is a BundleError naming the file and
 * the manifest field. A bundle without views gives one view, stage 0.
 */
export async function readViewsBundle(
  path: string,
  options: UnpackOptions = {},
): Promise<VerifiedViewsBundle> {
  const bundle = await readBundle(path, options);
  const views = viewsOf(bundle.manifest);
  const fetch = await viewFileReader(bundle, path, options);
  const deviceBytes: Uint8Array[] = [bundle.stageBytes[0]!];
  for (const [v, device] of views.devices.entries()) {
    if (v === 0) continue;
    const label = bundle.archive ? `${path}[${device.file}]` : join(path, device.file);
    const bytes = await fetch(device.file);
    if (bytes === undefined) {
      throw new BundleError(
        label,
        undefined,
        `missing (named by ${MANIFEST_FILE} views.devices[${v}].file)`,
      );
    }
    const actual = sha256Hex(bytes);
    if (actual !== device.sha256) {
      throw new BundleError(
        label,
        undefined,
        `sha256 mismatch: ${MANIFEST_FILE} views.devices[${v}].sha256 is ${device.sha256}, the file hashes to ${actual}`,
      );
    }
    deviceBytes.push(bytes);
  }
  return { bundle, views, deviceBytes };
}

async function viewFileReader(
  bundle: VerifiedBundle,
  path: string,
  options: UnpackOptions,
): Promise<(file: string) => Promise<Uint8Array | undefined>> {
  if (!bundle.archive) {
    return (file) =>
      readFile(join(path, file)).then(
        (b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength),
        () => undefined,
      );
  }
  const files = await readTarGz(await readFile(path), path, options);
  // readBundle accepted ddnn.json at the root or in one top-level folder; the views sit beside it.
  const nested = [...files.keys()].find(
    (f) => f.endsWith(`/${MANIFEST_FILE}`) && f.split("/").length === 2,
  );
  const prefix = files.has(MANIFEST_FILE) || !nested ? "" : nested.slice(0, -MANIFEST_FILE.length);
  return async (file) => files.get(prefix + file);
}

/**
 * The local aggregate of one or more samples' exit logits: `perView[v]` is view v's logits
 * ([n, classes] row-major, all views the same length) or undefined where the view is missing.
 */
export function aggregateLogits(
  how: LocalAggregation,
  perView: readonly (Float32Array | undefined)[],
): Float32Array {
  return merge(how, present(perView));
}

/**
 * The next stage's input from the devices' features: `perView[v]` is view v's features
 * ([n, ...featureShape] row-major) or undefined where missing; `samples` is n. `max` and `avg`
 * keep the shape, `concat` gives [n, K * C, ...] (K = perView.length) with zeros for a missing view.
 */
export function aggregateFeatures(
  how: FeatureAggregation,
  perView: readonly (Float32Array | undefined)[],
  samples: number,
): Float32Array {
  const views = present(perView);
  if (how !== "concat") return merge(how, views);
  const length = views[0]!.length;
  if (samples <= 0 || length % samples !== 0) {
    throw new RangeError(`${length} feature values do not split into ${samples} samples`);
  }
  const perSample = length / samples;
  const out = new Float32Array(length * perView.length);
  perView.forEach((x, v) => {
    if (!x) return;
    for (let i = 0; i < samples; i++) {
      out.set(x.subarray(i * perSample, (i + 1) * perSample), (i * perView.length + v) * perSample);
    }
  });
  return out;
}

function present(perView: readonly (Float32Array | undefined)[]): Float32Array[] {
  const views = perView.filter((x): x is Float32Array => x !== undefined);
  if (views.length === 0) throw new RangeError("no view present: nothing to aggregate");
  const length = views[0]!.length;
  if (views.some((x) => x.length !== length)) {
    throw new RangeError(
      `views differ in length (${views.map((x) => x.length).join(", ")}); they must match`,
    );
  }
  return views;
}

function merge(how: "max" | "avg", views: readonly Float32Array[]): Float32Array {
  const out = Float32Array.from(views[0]!);
  for (const x of views.slice(1)) {
    for (let i = 0; i < out.length; i++) {
      const a = out[i]!;
      const b = x[i]!;
      // NaN wins in max, as in torch.maximum; a Float32Array store rounds each sum to float32.
      out[i] = how === "max" ? (Number.isNaN(a) || a >= b ? a : b) : a + b;
    }
  }
  if (how === "avg") for (let i = 0; i < out.length; i++) out[i] = out[i]! / views.length;
  return out;
}

/**
 * The bundle as view v's device sees it: stage 0 is view v's file (bytes and manifest entry), the
 * later stages unchanged, the digest the bundle's own (it pins every view through `views`).
 */
export function viewBundle(views: VerifiedViewsBundle, view: number): VerifiedBundle {
  const device = views.views.devices[view];
  const bytes = views.deviceBytes[view];
  if (!device || !bytes) {
    throw new RangeError(`view ${view} is not a view of the bundle (it has ${views.views.count})`);
  }
  if (view === 0) return views.bundle;
  const { bundle } = views;
  const [first, ...rest] = bundle.manifest.stages;
  return {
    ...bundle,
    manifest: {
      ...bundle.manifest,
      stages: [{ ...first!, file: device.file, sha256: device.sha256 }, ...rest],
    },
    stageBytes: [bytes, ...bundle.stageBytes.slice(1)],
  };
}
