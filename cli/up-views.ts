/**
 * `ddnn up --views K`: the horizontal DDNN on one machine. K device agents, agent v replaying view v
 * of every capture of the multi-view evaluation sample from one shared start, the gateway fusing
 * each capture's views, the server finishing what the local aggregate does not answer, over the
 * embedded broker (or --broker). Ends with the run's Table II and its agreement with the
 * in-process multi-view pipeline, and the in-process accuracy of every view alone.
 */
import { openBundleSource } from "../core/bundle/source.js";
import { ConfigError } from "../core/config.js";
import { readIdx } from "../core/dataset/idx.js";
import { accuracyReport, adaptiveDecisions } from "../core/evaluation.js";
import { viewsOf } from "../core/views.js";
import { ViewsPipeline } from "../core/views-pipeline.js";
import { deviceAndServer } from "../profile/measure.js";
import {
  type LocalFogConfig,
  liveLine,
  replayViewDevices,
  startLocalFog,
  type Workload,
} from "./local-fog.js";
import { shippedViews, viewImagePaths, viewsSample } from "./paths.js";
import { renderTableII } from "./profile-text.js";
import { percent } from "./table.js";

export async function runViewsUp(
  cfg: LocalFogConfig & { views: number; json: boolean },
  out: (s: string) => void,
): Promise<number> {
  const progress = (s: string) => process.stderr.write(`${s}\n`);
  const bundlePath = cfg.bundle ?? shippedViews();
  const bundle = await openBundleSource(bundlePath);
  const { manifest } = bundle;
  const layout = viewsOf(manifest);
  if (layout.count !== cfg.views)
    throw new ConfigError(
      `--views ${cfg.views}: ${manifest.name} has ${layout.count === 1 ? "no views block (one view)" : `${layout.count} views`}`,
    );
  let imagePaths: string[];
  let labelsPath: string;
  if (cfg.images !== undefined && cfg.labels !== undefined) {
    imagePaths = viewImagePaths(cfg.images, cfg.views);
    labelsPath = cfg.labels;
  } else {
    const sample = viewsSample(bundlePath, cfg.views);
    if (!sample)
      throw new ConfigError(
        `--views: ${bundlePath} has no eval/ sample; give --images (with {view}) and --labels`,
      );
    imagePaths = sample.images;
    labelsPath = sample.labels;
  }
  const images = await Promise.all(imagePaths.map((p) => readIdx(p)));
  const truth = (await readIdx(labelsPath)).data;
  const items = Math.min(truth.length, ...images.map((i) => i.shape[0] ?? 0));
  const count = Math.min(cfg.limit ?? Number.POSITIVE_INFINITY, items);
  const first = images[0]!;
  const per = first.data.length / (first.shape[0] ?? 1);
  const names = manifest.stages.map((s) => s.name);
  const w: Workload = {
    bundlePath,
    bundle,
    manifest,
    names,
    imagesPath: imagePaths[0]!,
    images: first,
    truth,
    count,
    per,
  };

  // The in-process multi-view pipeline on the same captures: every view, and each view alone.
  const reference = await ViewsPipeline.load(bundlePath, { thresholds: cfg.threshold });
  const views = Array.from({ length: cfg.views }, (_, v) => v);
  const pixels = images.map((i) => i.data.subarray(0, count * per));
  const full = await reference.evaluateAll(pixels, count);
  const expected = accuracyReport(full, reference.policy, truth, names);
  const decisions = adaptiveDecisions(full, reference.policy);
  const single: number[] = [];
  for (const v of views) {
    const alone = await reference.evaluateAll(
      pixels.map((p, u) => (u === v ? p : undefined)),
      count,
    );
    single.push(accuracyReport(alone, reference.policy, truth, names).overall);
  }
  const policy = reference.policy;
  await reference.release();

  const fog = await startLocalFog({ ...cfg, serverOnly: false }, w);
  let result: Awaited<ReturnType<typeof replayViewDevices>>;
  try {
    progress(
      `ddnn up --views ${cfg.views}: ${manifest.name} ${manifest.version} (${cfg.views} devices -> gateway fusion (${layout.localAggregation} logits, ${layout.featureAggregation} features) -> ${names.slice(1).join(" -> ")}), broker ${fog.embedded ? `embedded at ${fog.brokerUrl}` : "given"}, ${count} captures at ${cfg.fps} fps`,
    );
    result = await replayViewDevices(cfg, w, fog, imagePaths, {
      onProgress: (r, ms) => progress(liveLine(r, count, names, ms)),
    });
  } finally {
    await fog.close();
  }
  // Every device of a capture gets the capture's answer: view 0's device's rows are the captures.
  const captures = result.rows[0]!;
  const n = captures.length;
  const ds = deviceAndServer(captures, names, policy.thresholds);
  const agree = captures.filter(
    (r) =>
      !r.answer.degraded &&
      r.answer.stageIndex === decisions.exitStage[r.index] &&
      r.answer.label === decisions.label[r.index],
  ).length;
  const complete = captures.filter((r) => r.answer.views?.length === cfg.views).length;
  const sameAnswer = captures.filter((r) =>
    result.rows.every((rows) =>
      rows.some(
        (o) =>
          o.index === r.index &&
          o.answer.label === r.answer.label &&
          o.answer.stageIndex === r.answer.stageIndex,
      ),
    ),
  ).length;
  const best = single.indexOf(Math.max(...single));
  const json = {
    captures: n,
    views: cfg.views,
    wallSeconds: result.wallS,
    fps: cfg.fps,
    encoding: { dtype: cfg.dtype, compression: cfg.compression },
    deviceAndServer: {
      local: ds.row.accuracy.local,
      server: ds.row.accuracy.server,
      overall: ds.row.accuracy.overall ?? 0,
      exitRates: Object.fromEntries(ds.exits.map((e) => [e.stage, e.exitRate])),
      degraded: ds.row.degraded,
      timingsMs: ds.row.timingsMs,
      bytesPerOffload: ds.row.bytesPerOffload,
      capturesFusedComplete: complete,
      sameAnswerOnEveryDevice: sameAnswer,
      agreementWithInProcess: n ? agree / n : 0,
    },
    inProcess: { ...expected, singleViewOverall: single, bestSingleView: best },
  };
  if (cfg.json) {
    out(JSON.stringify(json));
    return 0;
  }
  out(
    [
      "",
      `Table II for this run: ${n} captures, ${cfg.views} devices (one view each) at ${cfg.fps} fps, ${result.wallS.toFixed(1)} s, features as ${cfg.dtype}+${cfg.compression}; Local is the gateway's aggregate of the views`,
      "",
      renderTableII([ds.row]),
      "",
      `exits: ${ds.exits.map((e) => `${e.stage === names[0] ? `${e.stage} (aggregate)` : e.stage} ${percent(e.exitRate)}`).join(", ")}; degraded answers ${ds.row.degraded}`,
      `captures fused from all ${cfg.views} views ${complete}/${n}; the same answer on every device for ${sameAnswer}/${n}`,
      `in-process multi-view pipeline on the same captures: Overall ${percent(expected.overall)}, Ideal ${percent(expected.ideal)}; the distributed run gave the same exit and label for ${percent(json.deviceAndServer.agreementWithInProcess)} of captures (a degraded answer does not agree)`,
      `each view alone (in process): ${single.map((a, v) => `view ${v} ${percent(a)}`).join(", ")}; the aggregate beats the best single view (view ${best}) by ${((expected.overall - single[best]!) * 100).toFixed(2)} points`,
    ].join("\n"),
  );
  return 0;
}
