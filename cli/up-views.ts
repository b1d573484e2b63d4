/**
 * `ddnn up --views K`: the horizontal DDNN on one machine. K device agents, agent v replaying view v
 * of every capture of the multi-view evaluation sample from one shared start, the gateway fusing
 * each capture's views, the server finishing what the local aggregate does not answer, over the
 * embedded broker (or --broker); then a probe pass of the same captures (the aggregator's
 * threshold 0) for Ideal. Ends with the run's Table II, its agreement with the in-process
 * multi-view pipeline, and the in-process accuracy of every view alone. `ddnn profile` runs the
 * same passes (cli/profile-views.ts).
 */
import { type LocalFogConfig, openViewsWorkload } from "./local-fog.js";
import { renderTableII, renderViewsAccuracy, VIEWS_TABLE_II_LEGEND } from "./profile-text.js";
import { runHorizontal } from "./profile-views.js";
import { percent } from "./table.js";

export async function runViewsUp(
  cfg: LocalFogConfig & { views: number; json: boolean },
  out: (s: string) => void,
): Promise<number> {
  const progress = (s: string) => process.stderr.write(`${s}\n`);
  const w = await openViewsWorkload(cfg, cfg.views);
  progress(`ddnn up --views ${cfg.views}`);
  const { run, main, embedded } = await runHorizontal(cfg, w, { probe: true, progress });
  const { ds, views } = run;
  const n = views.captures;
  const single = views.devices.map((d) => d.aloneOverall);
  const json = {
    captures: n,
    views: cfg.views,
    wallSeconds: main.wallS,
    fps: cfg.fps,
    broker: embedded ? "embedded" : "external",
    encoding: { dtype: cfg.dtype, compression: cfg.compression },
    deviceAndServer: {
      local: ds.row.accuracy.local,
      server: ds.row.accuracy.server,
      overall: ds.row.accuracy.overall ?? 0,
      ideal: ds.row.accuracy.ideal,
      exitRates: Object.fromEntries(ds.exits.map((e) => [e.stage, e.exitRate])),
      degraded: ds.row.degraded,
      timingsMs: ds.row.timingsMs,
      bytesPerOffload: ds.row.bytesPerOffload,
      bytesPerSample: ds.row.bytesPerSample,
      capturesFusedComplete: views.capturesFusedComplete,
      sameAnswerOnEveryDevice: views.sameAnswerOnEveryDevice,
      agreementWithInProcess: views.agreementWithInProcess,
    },
    inProcess: {
      ...views.inProcess,
      singleViewOverall: single,
      singleViewDevice: views.devices.map((d) => d.aloneAccuracy),
      bestSingleView: views.bestSingleView,
    },
    probePass: views.probePass,
    bytes: views.bytes,
  };
  if (cfg.json) {
    out(JSON.stringify(json));
    return 0;
  }
  out(
    [
      "",
      `Table II for this run: ${n} captures, ${cfg.views} devices (one view each) at ${cfg.fps} fps, ${main.wallS.toFixed(1)} s, features as ${cfg.dtype}+${cfg.compression}; Local is the gateway's aggregate of the views`,
      "",
      renderTableII([ds.row], VIEWS_TABLE_II_LEGEND),
      "",
      renderViewsAccuracy(views, ds.row, ds.exits),
      "",
      `exits: ${ds.exits.map((e, s) => `${s === 0 ? `${e.stage} (aggregate)` : e.stage} ${percent(e.exitRate)}`).join(", ")}; degraded answers ${ds.row.degraded}`,
    ].join("\n"),
  );
  return 0;
}
