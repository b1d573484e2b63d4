import { writeFile } from "node:fs/promises";
import { performance } from "node:perf_hooks";
import { z } from "zod";
import { readBundle } from "../core/bundle/read.js";
import { openStages } from "../core/bundle/stages.js";
import {
  boolField,
  field,
  intField,
  loadConfig,
  program,
  programHelp,
  tierFields,
  wantsHelp,
} from "../core/config.js";
import { readIdx } from "../core/dataset/idx.js";
import { type AccuracyReport, accuracyReport, adaptiveDecisions } from "../core/evaluation.js";
import type { ExitPolicy } from "../core/exit.js";
import { exitPolicyFor, type FullResult, Pipeline } from "../core/pipeline.js";
import { viewsOf } from "../core/views.js";
import { ViewsPipeline } from "../core/views-pipeline.js";
import { UsageError } from "./args.js";
import { shipped, viewImagePaths, viewsSample } from "./paths.js";
import { percent, renderTable } from "./table.js";

/** `ddnn eval`: every flag, environment variable, file key and default it has. */
export const evalConfig = program({
  bundle: field(z.string().min(1).optional(), {
    help: "bundle directory or .tar.gz",
    value: "PATH",
    defaultText: "the shipped models/fashion-deep",
  }),
  images: field(z.string().min(1).optional(), {
    help: "idx images, gzipped or not, one sample per item in the bundle's input shape",
    value: "PATH",
    defaultText: "the shipped 2,000-image Fashion-MNIST sample",
  }),
  labels: field(z.string().min(1).optional(), {
    help: "idx labels matching --images",
    value: "PATH",
  }),
  limit: field(intField(1, Number.MAX_SAFE_INTEGER).optional(), {
    help: "evaluate the first N samples only",
    value: "N",
  }),
  threshold: tierFields.threshold,
  sweep: field(boolField.default(false), {
    switch: true,
    help: "table for first-exit thresholds 0.05..0.95 instead of one run",
  }),
  json: field(boolField.default(false), {
    switch: true,
    help: "print one JSON object (with --sweep: one JSON array)",
  }),
  predictions: field(z.string().min(1).optional(), {
    help: "write per-sample exit stage, label, and every stage's label and entropy",
    value: "FILE",
  }),
  batchSize: field(intField(1, 65536).default(256), {
    help: "samples per onnxruntime run",
    value: "N",
  }),
  missingViews: field(z.array(z.coerce.number().int().nonnegative()).default([]), {
    multiple: true,
    help: "multi-view bundle: evaluate as if view V's device were missing (repeat for several)",
    value: "V",
  }),
  threads: field(intField(1, 256).optional(), {
    help: "onnxruntime intra-op threads",
    value: "N",
    defaultText: "onnxruntime's choice",
  }),
});

export const evalHelp = programHelp(evalConfig, {
  title:
    "ddnn eval: the accuracy table of a bundle (the reference paper's Table II accuracy columns)",
  usage: "ddnn eval [--bundle DIR|FILE.tar.gz] [--images IDX] [--labels IDX] [flags]",
});

export interface EvalOutcome {
  readonly report: AccuracyReport;
  readonly result: FullResult;
  readonly wallMs: number;
}

export async function runEval(
  argv: readonly string[],
  out: (text: string) => void,
): Promise<number> {
  if (wantsHelp(argv)) {
    out(evalHelp);
    return 0;
  }
  const cfg = loadConfig(evalConfig, argv);
  const defaults = shipped();
  if ((cfg.images === undefined) !== (cfg.labels === undefined)) {
    throw new UsageError("--images and --labels go together");
  }
  const thresholds = cfg.threshold;
  const bundle = await readBundle(cfg.bundle ?? defaults.bundle);
  let policy: ExitPolicy;
  try {
    policy = exitPolicyFor(bundle.manifest, thresholds);
  } catch (err) {
    throw new UsageError(`--threshold: ${(err as Error).message}`);
  }
  const views = viewsOf(bundle.manifest).count;
  if (views > 1) return runViewsEval(cfg, cfg.bundle ?? defaults.bundle, views, policy, out);
  if (cfg.missingViews.length > 0)
    throw new UsageError("--missing-views: the bundle has one view (no views block)");
  const stages = await openStages(
    bundle,
    cfg.threads === undefined ? {} : { intraOpThreads: cfg.threads },
  );
  const pipeline = new Pipeline(bundle, stages, policy);
  try {
    const images = await readIdx(cfg.images ?? defaults.images);
    const labels = await readIdx(cfg.labels ?? defaults.labels);
    const sampleShape = images.shape.slice(1);
    const perSample = sampleShape.reduce((a, b) => a * b, 1);
    if (perSample !== pipeline.samplePixels) {
      throw new UsageError(
        `--images: items have shape [${sampleShape.join(", ")}], the bundle's input.shape is [${pipeline.manifest.input.shape.join(", ")}]`,
      );
    }
    if (labels.shape.length !== 1 || labels.shape[0] !== images.shape[0]) {
      throw new UsageError(
        `--labels: shape [${labels.shape.join(", ")}] does not match ${images.shape[0]} images`,
      );
    }
    const count = Math.min(cfg.limit ?? Number.POSITIVE_INFINITY, images.shape[0] ?? 0);
    const classes = pipeline.classes;
    const bad = labels.data.subarray(0, count).findIndex((y) => y >= classes);
    if (bad !== -1)
      throw new UsageError(
        `--labels: label ${labels.data[bad]} at item ${bad} is outside the bundle's ${classes} labels`,
      );

    const started = performance.now();
    const result = await pipeline.evaluateAll(
      images.data.subarray(0, count * perSample),
      count,
      cfg.batchSize,
    );
    const wallMs = performance.now() - started;
    const names = pipeline.manifest.stages.map((s) => s.name);
    const truth = labels.data.subarray(0, count);

    if (cfg.predictions !== undefined) {
      const { exitStage, label } = adaptiveDecisions(result, pipeline.policy);
      await writeFile(cfg.predictions, JSON.stringify(predictionsJson(result, exitStage, label)));
    }
    if (cfg.sweep) {
      const rows = sweepThresholds().map((t) => {
        const policy = exitPolicyFor(pipeline.manifest, {
          ...thresholds,
          ...(names.length > 1 ? { [names[0]!]: t } : {}),
        });
        return { threshold: t, ...accuracyReport(result, policy, truth, names) };
      });
      out(cfg.json ? JSON.stringify(rows) : renderSweep(rows, names));
      return 0;
    }
    const report = accuracyReport(result, pipeline.policy, truth, names);
    if (cfg.json) {
      out(JSON.stringify(report));
    } else {
      out(renderReport(pipeline, report, result, wallMs));
    }
    return 0;
  } finally {
    await pipeline.release();
  }
}

type EvalConfig = ReturnType<typeof loadConfig<typeof evalConfig>>;

/**
 * A multi-view bundle: every view's images through its own device stage, the local aggregate as
 * the first exit, the aggregated features through the later stages (docs/bundle-views.md), with
 * the views of --missing-views left out as the gateway leaves out views that did not come.
 */
async function runViewsEval(
  cfg: EvalConfig,
  bundlePath: string,
  views: number,
  policy: ExitPolicy,
  out: (text: string) => void,
): Promise<number> {
  const bad = cfg.missingViews.find((v) => v >= views);
  if (bad !== undefined)
    throw new UsageError(
      `--missing-views: view ${bad} is not a view of the bundle (0..${views - 1})`,
    );
  if (new Set(cfg.missingViews).size >= views)
    throw new UsageError("--missing-views: at least one view must stay");
  const sample = viewsSample(bundlePath, views);
  let imagePaths: string[];
  let labelsPath: string;
  if (cfg.images !== undefined && cfg.labels !== undefined) {
    try {
      imagePaths = viewImagePaths(cfg.images, views);
    } catch (err) {
      throw new UsageError(`--images: ${(err as Error).message}`);
    }
    labelsPath = cfg.labels;
  } else if (sample) {
    imagePaths = sample.images;
    labelsPath = sample.labels;
  } else {
    throw new UsageError(
      `a ${views}-view bundle without an eval/ sample needs --images (with {view}) and --labels`,
    );
  }
  const pipeline = await ViewsPipeline.load(bundlePath, {
    ...(cfg.threshold ? { thresholds: cfg.threshold } : {}),
    ...(cfg.threads === undefined ? {} : { intraOpThreads: cfg.threads }),
  });
  try {
    const images = await Promise.all(imagePaths.map((p) => readIdx(p)));
    const labels = await readIdx(labelsPath);
    const items = Math.min(...images.map((i) => i.shape[0] ?? 0));
    images.forEach((img, v) => {
      const per = img.shape.slice(1).reduce((a, b) => a * b, 1);
      if (per !== pipeline.samplePixels)
        throw new UsageError(
          `--images: view ${v}'s items have shape [${img.shape.slice(1).join(", ")}], the bundle's input.shape is [${pipeline.manifest.input.shape.join(", ")}]`,
        );
    });
    if (labels.shape[0] !== items)
      throw new UsageError(`--labels: ${labels.shape[0]} labels for ${items} items per view`);
    const count = Math.min(cfg.limit ?? Number.POSITIVE_INFINITY, items);
    const missing = new Set(cfg.missingViews);
    const per = pipeline.samplePixels;
    const started = performance.now();
    const result = await pipeline.evaluateAll(
      images.map((img, v) => (missing.has(v) ? undefined : img.data.subarray(0, count * per))),
      count,
      cfg.batchSize,
    );
    const wallMs = performance.now() - started;
    const names = pipeline.manifest.stages.map((s) => s.name);
    const truth = labels.data.subarray(0, count);
    if (cfg.predictions !== undefined) {
      const { exitStage, label } = adaptiveDecisions(result, policy);
      await writeFile(cfg.predictions, JSON.stringify(predictionsJson(result, exitStage, label)));
    }
    const report = accuracyReport(result, policy, truth, names);
    const present = Array.from({ length: views }, (_, v) => v).filter((v) => !missing.has(v));
    if (cfg.json) {
      out(JSON.stringify({ ...report, views: { count: views, present } }));
      return 0;
    }
    const layout = pipeline.layout;
    out(
      [
        `views: ${views} (present ${present.join(", ")}${missing.size ? `; missing ${[...missing].sort().join(", ")}` : ""}), local aggregation ${layout.localAggregation}, feature aggregation ${layout.featureAggregation}; the first exit is the local aggregate`,
        renderReport(
          { manifest: pipeline.manifest, policy, digest: pipeline.bundle.bundle.digest },
          report,
          result,
          wallMs,
        ),
      ].join("\n"),
    );
    return 0;
  } finally {
    await pipeline.release();
  }
}

function sweepThresholds(): number[] {
  return Array.from({ length: 19 }, (_, i) => Math.round((0.05 + 0.05 * i) * 100) / 100);
}

function predictionsJson(result: FullResult, exitStage: Int32Array, label: Int32Array) {
  const k = result.labels.length;
  const row = <T>(f: (s: number) => T) => Array.from({ length: k }, (_, s) => f(s));
  return {
    exitStage: Array.from(exitStage),
    label: Array.from(label),
    stageLabels: Array.from({ length: result.samples }, (_, i) =>
      row((s) => (result.labels[s] as Int32Array)[i]),
    ),
    stageEntropy: Array.from({ length: result.samples }, (_, i) =>
      row((s) => (result.entropy[s] as Float64Array)[i]),
    ),
  };
}

function renderReport(
  pipeline: {
    readonly manifest: Pipeline["manifest"];
    readonly policy: ExitPolicy;
    readonly bundle?: { readonly digest: string };
    readonly digest?: string;
  },
  report: AccuracyReport,
  result: FullResult,
  wallMs: number,
): string {
  const m = pipeline.manifest;
  const thresholds = m.stages
    .map((s, i) => {
      const t = pipeline.policy.thresholds[i];
      return t === undefined ? `${s.name}: always` : `${s.name} < ${t}`;
    })
    .join(", ");
  const rows = report.stages.map((s, i) => [
    s.name,
    percent(s.exitRate),
    percent(s.accuracyAll),
    percent(s.accuracyExited),
    (((result.stageMs[i] ?? 0) / Math.max(1, report.samples)) * 1000).toFixed(1),
  ]);
  const first = report.stages[0];
  const last = report.stages[report.stages.length - 1];
  return [
    `${m.name} ${m.version}  digest ${(pipeline.digest ?? pipeline.bundle?.digest ?? "").slice(0, 12)}  samples ${report.samples}`,
    `exit when normalized entropy < threshold: ${thresholds}`,
    "",
    renderTable(["stage", "exit rate", "accuracy (all)", "accuracy (exited)", "us/sample"], rows),
    "",
    `Overall ${percent(report.overall)}   Ideal ${percent(report.ideal)}`,
    `paper's columns: Local ${percent(first?.accuracyAll ?? 0)} (first exit, all samples)   ` +
      `Server ${percent(last?.accuracyExited ?? null)} (last stage, samples that reached it)`,
    `${report.samples} samples, all stages, in ${(wallMs / 1000).toFixed(2)} s (${Math.round((report.samples / wallMs) * 1000)} samples/s)`,
  ].join("\n");
}

function renderSweep(
  rows: readonly (AccuracyReport & { threshold: number })[],
  names: readonly string[],
): string {
  const header = ["threshold", ...names.map((n) => `exit ${n}`), "Overall", "Ideal"];
  return [
    `sweep of the ${names[0]} exit's threshold (other exits as configured)`,
    "",
    renderTable(
      header,
      rows.map((r) => [
        r.threshold.toFixed(2),
        ...r.stages.map((s) => percent(s.exitRate)),
        percent(r.overall),
        percent(r.ideal),
      ]),
    ),
  ].join("\n");
}
