/**
 * `ddnn profile`: the designer's loop on a fog it starts (the same fog and flags as `ddnn up`).
 * Table II measured on the distributed run (Device&Server over MQTT with probe requests for Local
 * and Ideal, Server Only over MQTT and over HTTP), the threshold sweep from that one pass, the
 * capacity of a server replica (model and ramp), and an advice printed as a DDNNModel patch.
 */
import { writeFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { z } from "zod";
import {
  boolField,
  field,
  intField,
  loadConfig,
  msField,
  program,
  programHelp,
  wantsHelp,
} from "../core/config.js";
import { exitPolicyFor } from "../core/pipeline.js";
import { advise } from "../profile/advise.js";
import { measureCapacity } from "../profile/capacity.js";
import { deviceAndServer, serverOnly } from "../profile/measure.js";
import { PROFILE_FORMAT, type ProfileReport } from "../profile/schema.js";
import { sweepExits, traceRows } from "../profile/sweep.js";
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
import { renderProfileText } from "./profile-text.js";

export const profileConfig = program({
  ...localFogFields,
  attach: field(boolField.default(false), {
    switch: true,
    help: "profile a fog that already runs on --broker (and --model): start only the device agents here, not the broker, server or gateway",
  }),
  serverUrl: field(z.string().url("must be a URL like http://server:8080").optional(), {
    help: "with --attach: the server tier's HTTP address, for the Server Only (HTTP) row",
    value: "URL",
    defaultText: "no Server Only (HTTP) row",
  }),
  json: field(z.string().min(1).optional(), {
    help: "write the report as JSON (ddnn-profile/v1, docs/profile.md)",
    value: "FILE",
  }),
  html: field(z.string().min(1).optional(), {
    help: "write the report as one self-contained HTML file with charts",
    value: "FILE",
  }),
  sweepSteps: field(intField(1, 1000).default(20), {
    help: "thresholds per exit in the sweep: 0, 1/N, ..., 1",
    value: "N",
  }),
  sloMs: field(msField(0.001, 3_600_000).optional(), {
    help: "latency objective: the ramp stops where p99 T_Total passes it, the advice keeps p95 within it",
    value: "MS",
    defaultText: "no capacity ramp; advice without a latency bound",
  }),
  bytesPerSecond: field(z.coerce.number().positive("must be > 0").optional(), {
    help: "uplink budget per device for the advice, bytes per second",
    value: "B",
    defaultText: "none",
  }),
  rampSteps: field(intField(1, 50).default(6), {
    help: "with --slo-ms: offered loads tried by the capacity ramp, each twice the last",
    value: "N",
  }),
});

export async function runProfile(
  argv: readonly string[],
  out: (s: string) => void,
): Promise<number> {
  if (wantsHelp(argv)) {
    out(
      programHelp(profileConfig, {
        title:
          "ddnn profile: Table II measured on the fog, the threshold sweep, capacity and advice",
        usage: "ddnn profile [flags] [--json FILE] [--html FILE]",
      }),
    );
    return 0;
  }
  const cfg = loadConfig(profileConfig, argv);
  const report = await profile(cfg, ["ddnn", "profile", ...argv].join(" "));
  out(renderProfileText(report));
  if (cfg.json) await writeFile(cfg.json, `${JSON.stringify(report, null, 2)}\n`);
  if (cfg.html) {
    const { renderReportHtml } = await import("../profile/report-html.js");
    await writeFile(cfg.html, await renderReportHtml(report));
  }
  return 0;
}

export type ProfileConfig = ReturnType<typeof loadConfig<typeof profileConfig>>;

/** Runs the whole profile on a fog it starts and stops; progress goes to stderr. */
export async function profile(cfg: ProfileConfig, command: string): Promise<ProfileReport> {
  const progress = (s: string) => process.stderr.write(`${s}\n`);
  const w = await openWorkload(cfg);
  const policy = exitPolicyFor(w.manifest, cfg.threshold);
  const fog = await startLocalFog(cfg, w, {
    serverOnly: cfg.serverOnly,
    ...(cfg.attach ? { attach: { serverUrl: cfg.serverUrl } } : {}),
  });
  const notes: string[] = [];
  try {
    progress(`ddnn profile: ${describeFog(cfg, w, fog)}`);
    progress("Device&Server over MQTT, with probe requests for every exit's answer");
    const cpu0 = process.cpuUsage();
    const { rows, wallS, deviceStageMs } = await replayDevices(cfg, w, fog, {
      probe: true,
      onProgress: (r, ms) => progress(liveLine(r, w.count, w.names, ms)),
    });
    const cpu = process.cpuUsage(cpu0);
    const ds = deviceAndServer(rows, w.names, policy.thresholds);
    const indices = rows.map((r) => r.index).sort((a, b) => a - b);
    const tableII = [ds.row];
    const latencySamples = [
      { configuration: "Device&Server", totalMs: rows.map((r) => r.answer.timings.total) },
    ];
    if (cfg.serverOnly && w.names.length > 1) {
      if (fog.serverOnly) {
        progress("Server Only over MQTT: the image to a server running every stage");
        const mqtt = await serverOnlyMqtt(cfg, w, fog, indices);
        tableII.push(serverOnly(mqtt, w.names, "Server Only", "MQTT"));
        latencySamples.push({ configuration: "Server Only", totalMs: mqtt.map((r) => r.totalMs) });
      } else
        notes.push(
          "attached: no Server Only over MQTT (a deployment has no server running every stage on stage 0's topic)",
        );
      if (fog.serverUrl) {
        progress("Server Only over HTTP (Open Inference Protocol v2)");
        const http = await serverOnlyHttp(cfg, w, fog, indices);
        tableII.push(serverOnly(http, w.names, "Server Only (HTTP)", "HTTP"));
        latencySamples.push({
          configuration: "Server Only (HTTP)",
          totalMs: http.map((r) => r.totalMs),
        });
      } else notes.push("attached without --server-url: no Server Only (HTTP) row");
    }
    const traces = traceRows(rows, w.names.length);
    if (traces.incomplete > 0)
      notes.push(
        `${traces.incomplete} of ${rows.length} samples lack an exit's answer or a path's time (degraded, or upstream tiers that do not honour probe requests): the sweep, capacity and advice use the other ${traces.traces.length}`,
      );
    notes.push(
      "probe requests (confident samples sent upstream again to learn every exit's answer) ran during the Device&Server pass: they load the server as extra traffic would, and are counted in no column",
    );
    const sweep =
      traces.traces.length > 0
        ? sweepExits(traces, w.names, policy.thresholds, cfg.sweepSteps)
        : null;
    const capacity =
      cfg.sloMs === undefined
        ? null
        : await measureCapacity(
            {
              rows,
              cpuMsPerSample: rows.length ? (cpu.user + cpu.system) / 1000 / rows.length : 0,
              cores: availableParallelism(),
              lastStage: w.names.length - 1,
              workers: cfg.workers,
              fps: cfg.fps,
              devices: cfg.devices,
              sloMs: cfg.sloMs,
              steps: cfg.rampSteps,
              samples: w.count,
            },
            async (offeredPerS, samples) =>
              (
                await replayDevices(cfg, w, fog, {
                  probe: false,
                  deviceStageMs,
                  fps: offeredPerS / cfg.devices,
                  indices: Array.from({ length: samples }, (_, i) => i % w.count),
                })
              ).rows,
            progress,
          );
    if (cfg.sloMs === undefined) notes.push("no --slo-ms: no capacity ramp");
    const advice =
      traces.traces.length > 0
        ? advise(traces, w.manifest, policy.thresholds, {
            sloMs: cfg.sloMs ?? null,
            bytesPerSecond: cfg.bytesPerSecond ?? null,
            fps: cfg.fps,
            steps: cfg.sweepSteps,
            deviceSlowdown: cfg.deviceSlowdown,
          })
        : null;
    return {
      format: PROFILE_FORMAT,
      generatedAt: new Date().toISOString(),
      command,
      model: {
        name: w.manifest.name,
        version: w.manifest.version,
        digest: w.bundle.digest,
        stages: w.names,
        thresholds: Object.fromEntries(
          w.names.flatMap((n, i) => {
            const t = policy.thresholds[i];
            return t === undefined ? [] : [[n, t]];
          }),
        ),
      },
      run: {
        samples: rows.length,
        devices: cfg.devices,
        fps: cfg.fps,
        deviceSlowdown: cfg.deviceSlowdown,
        deviceStageMs,
        encoding: { dtype: cfg.dtype, compression: cfg.compression },
        broker: fog.attached ? "attached" : fog.embedded ? "embedded" : "external",
        wallSeconds: wallS,
      },
      tableII,
      exits: ds.exits,
      probe: ds.probe,
      latencySamples,
      sweep,
      capacity,
      advice,
      notes,
    };
  } finally {
    await fog.close();
  }
}
