/**
 * `ddnn up`: the whole fog on one machine. An embedded broker (or --broker), the server pool, a
 * gateway when the bundle has middle stages, and K device agents replaying the evaluation sample
 * like cameras. Ends with the reference paper's Table II for the run, for both configurations:
 * Device&Server through the tiers (probe requests give every exit's answer, for Local and Ideal),
 * and Server Only over MQTT and over HTTP.
 */

import { openBundleSource } from "../core/bundle/source.js";
import { openStages } from "../core/bundle/stages.js";
import {
  boolField,
  field,
  intField,
  loadConfig,
  program,
  programHelp,
  wantsHelp,
} from "../core/config.js";
import { accuracyReport, adaptiveDecisions } from "../core/evaluation.js";
import { exitPolicyFor, Pipeline } from "../core/pipeline.js";
import { viewsOf } from "../core/views.js";
import { deviceAndServer, type Row, type ServerOnlyRow, serverOnly } from "../profile/measure.js";
import {
  describeFog,
  liveLine,
  localFogFields,
  openWorkload,
  replayDevices,
  serverOnlyHttp,
  serverOnlyMqtt,
  startLocalFog,
} from "./local-fog.js";
import { renderTableII } from "./profile-text.js";
import { percent } from "./table.js";
import { runViewsUp } from "./up-views.js";

/** `ddnn up`: the fields of a fog on one machine (cli/local-fog.ts) and its own. */
export const upConfig = program({
  ...localFogFields,
  json: field(boolField.default(false), {
    switch: true,
    help: "print the final report as one JSON object",
  }),
  views: field(intField(2, 64).optional(), {
    help: "horizontal DDNN: K devices, each replaying its own view of every capture, fused by the gateway (the bundle defaults to the shipped models/fashion-views3; --images takes {view})",
    value: "K",
  }),
});

export async function runUp(argv: readonly string[], out: (s: string) => void): Promise<number> {
  if (wantsHelp(argv)) {
    out(
      programHelp(upConfig, {
        title: "ddnn up: the whole fog on one machine, ending with the paper's Table II",
        usage: "ddnn up [flags]",
      }),
    );
    return 0;
  }
  const cfg = loadConfig(upConfig, argv);
  if (cfg.views !== undefined) return runViewsUp({ ...cfg, views: cfg.views }, out);
  if (cfg.bundle !== undefined) {
    // A multi-view bundle runs as the horizontal DDNN even without --views.
    const views = viewsOf((await openBundleSource(cfg.bundle)).manifest).count;
    if (views > 1) return runViewsUp({ ...cfg, views }, out);
  }
  const w = await openWorkload(cfg);
  const { manifest, names, count, per } = w;
  const progress = (s: string) => process.stderr.write(`${s}\n`);

  // What the model gives in one process: the reference the distributed run is compared with.
  const reference = new Pipeline(
    w.bundle,
    await openStages(w.bundle),
    exitPolicyFor(manifest, cfg.threshold),
  );
  const full = await reference.evaluateAll(w.images.data.subarray(0, count * per), count);
  const expected = accuracyReport(full, reference.policy, w.truth, names);
  await reference.release();

  const fog = await startLocalFog(cfg, w, { serverOnly: cfg.serverOnly });
  let rows: Row[];
  let wallS: number;
  const so: { mqtt: ServerOnlyRow[]; http: ServerOnlyRow[] } = { mqtt: [], http: [] };
  try {
    progress(`ddnn up: ${describeFog(cfg, w, fog)}`);
    // Probe requests give every exit's answer for every sample: Local and Ideal of the run itself.
    ({ rows, wallS } = await replayDevices(cfg, w, fog, {
      probe: true,
      onProgress: (r, ms) => progress(liveLine(r, count, names, ms)),
    }));
    if (cfg.serverOnly && names.length > 1) {
      const indices = rows.map((r) => r.index).sort((a, b) => a - b);
      so.mqtt = await serverOnlyMqtt(cfg, w, fog, indices);
      so.http = await serverOnlyHttp(cfg, w, fog, indices);
    }
  } finally {
    await fog.close();
  }

  const decisions = adaptiveDecisions(full, reference.policy);
  const report = tableII(
    rows,
    so,
    names,
    expected,
    decisions,
    per,
    cfg,
    wallS,
    reference.policy.thresholds,
  );
  out(cfg.json ? JSON.stringify(report.json) : report.text);
  return 0;
}

function tableII(
  rows: readonly Row[],
  so: { mqtt: readonly ServerOnlyRow[]; http: readonly ServerOnlyRow[] },
  names: readonly string[],
  expected: ReturnType<typeof accuracyReport>,
  decisions: ReturnType<typeof adaptiveDecisions>,
  rawBytes: number,
  cfg: { devices: number; fps: number; dtype: string; compression: string },
  wallS: number,
  thresholds: readonly (number | undefined)[],
) {
  const n = rows.length;
  const ds = deviceAndServer(rows, names, thresholds);
  // A degraded answer is the device's fallback, not the model's decision: it does not agree.
  const agree = rows.filter(
    (r) =>
      !r.answer.degraded &&
      r.answer.stageIndex === decisions.exitStage[r.index] &&
      r.answer.label === decisions.label[r.index],
  ).length;
  const mqtt = so.mqtt.length ? serverOnly(so.mqtt, names, "Server Only", "MQTT") : null;
  const http = so.http.length ? serverOnly(so.http, names, "Server Only (HTTP)", "HTTP") : null;
  const a = ds.row.accuracy;
  const json = {
    samples: n,
    wallSeconds: wallS,
    devices: cfg.devices,
    fps: cfg.fps,
    encoding: { dtype: cfg.dtype, compression: cfg.compression },
    deviceAndServer: {
      local: a.local,
      server: a.server,
      overall: a.overall ?? 0,
      ideal: a.ideal,
      exitRates: Object.fromEntries(ds.exits.map((e) => [e.stage, e.exitRate])),
      degraded: ds.row.degraded,
      agreementWithInProcess: n ? agree / n : 0,
      timingsMs: ds.row.timingsMs,
      bytesPerOffload: ds.row.bytesPerOffload,
      rawImageBytes: rawBytes,
    },
    serverOnly: mqtt ? { accuracy: mqtt.accuracy.overall, timingsMs: mqtt.timingsMs } : null,
    serverOnlyHttp: http ? { accuracy: http.accuracy.overall, timingsMs: http.timingsMs } : null,
    inProcess: expected,
  };
  const text = [
    "",
    `Table II for this run: ${n} images, ${cfg.devices} devices at ${cfg.fps} fps, ${wallS.toFixed(1)} s, features as ${cfg.dtype}+${cfg.compression}`,
    "",
    renderTableII([ds.row, ...(mqtt ? [mqtt] : []), ...(http ? [http] : [])]),
    "",
    `exits: ${ds.exits.map((e) => `${e.stage} ${percent(e.exitRate)}`).join(", ")}; degraded answers ${ds.row.degraded}`,
    `raw image ${rawBytes} bytes`,
    `in-process pipeline on the same images: Overall ${percent(expected.overall)}, Ideal ${percent(expected.ideal)}; the distributed run gave the same exit and label for ${percent(json.deviceAndServer.agreementWithInProcess)} of images (a degraded answer does not agree)`,
  ].join("\n");
  return { json, text };
}
