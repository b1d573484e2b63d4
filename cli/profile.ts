/**
 * `ddnn profile`: the designer's loop on a fog it starts (the same fog and flags as `ddnn up`).
 * Table II measured on the distributed run (Device&Server over MQTT with probe requests for Local
 * and Ideal, Server Only over MQTT and over HTTP), the threshold sweep from that one pass, the
 * capacity of a server replica (model and ramp), and an advice printed as a DDNNModel patch.
 */
import { writeFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { z } from "zod";
import { openBundleSource } from "../core/bundle/source.js";
import {
  boolField,
  brokerInsecurity,
  ConfigError,
  field,
  intField,
  loadConfig,
  msField,
  program,
  programHelp,
  wantsHelp,
} from "../core/config.js";
import { exitPolicyFor } from "../core/pipeline.js";
import { viewsOf } from "../core/views.js";
import { advise } from "../profile/advise.js";
import { measureCapacity } from "../profile/capacity.js";
import {
  type LinkFault,
  type LinkSpec,
  linkUnavailable,
  parseLinkSpec,
  VethLink,
} from "../profile/link.js";
import { deviceAndServer, latency, serverOnly } from "../profile/measure.js";
import { type LinkReport, PROFILE_FORMAT, type ProfileReport } from "../profile/schema.js";
import {
  canReadProcessCpu,
  type ServerProcess,
  startServerProcess,
} from "../profile/server-process.js";
import { sweepExits, traceRows } from "../profile/sweep.js";
import {
  describeFog,
  type LocalFog,
  liveLine,
  localFogFields,
  openViewsWorkload,
  openWorkload,
  replayDevices,
  serverOnlyHttp,
  serverOnlyMqtt,
  startLocalFog,
} from "./local-fog.js";
import { renderProfileText } from "./profile-text.js";
import { profileViews } from "./profile-views.js";

export const profileConfig = program({
  ...localFogFields,
  attach: field(boolField.default(false), {
    switch: true,
    help: "profile a fog that already runs on --broker (and --model): start only the device agents here, not the broker, server or gateway",
  }),
  kubeconfig: field(z.string().min(1).optional(), {
    help: "profile a DDNNModel deployed on Kubernetes (with --model NAME): find its broker and server Pods, bundle, thresholds and wire settings, and run as --attach against them (the Pod IPs must be routable from here)",
    value: "PATH",
    defaultText: "none",
  }),
  namespace: field(z.string().min(1).optional(), {
    help: "with --kubeconfig: the DDNNModel's namespace (or give --model NS/NAME)",
    value: "NS",
    defaultText: "the kubeconfig context's, else default",
  }),
  serverUrl: field(z.string().url("must be a URL like http://server:8080").optional(), {
    help: "with --attach: the server tier's HTTP address, for the Server Only (HTTP) row",
    value: "URL",
    defaultText: "no Server Only (HTTP) row",
  }),
  link: field(
    z
      .string()
      .min(1)
      .superRefine((s, ctx) => {
        try {
          parseLinkSpec(s);
        } catch (err) {
          ctx.addIssue({ code: "custom", message: (err as Error).message });
        }
      })
      .optional(),
    {
      help: "put the devices on the far side of an emulated link, RTT,BANDWIDTH,LOSS like 50ms,1mbit,1% (BANDWIDTH may be none); needs root, network namespaces, veth, tc and iptables (docs/profile.md); the report also measures the pass without it",
      value: "RTT,BW,LOSS",
      defaultText: "none: the devices reach the broker over this machine's loopback",
    },
  ),
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
          "ddnn profile: Table II measured on the fog, the threshold sweep, capacity and advice (a multi-view bundle: the horizontal DDNN's Table II and sweep)",
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

/** A URL of `fog` rewritten to the local end of the link's forward to its host and port. */
async function across(veth: VethLink, url: string, defaultPort: number): Promise<string> {
  const u = new URL(url);
  const local = await veth.forward({
    host: u.hostname.replace(/^\[|\]$/g, ""),
    port: Number(u.port || defaultPort),
  });
  u.hostname = local.host;
  u.port = String(local.port);
  return u.toString().replace(/\/$/, "");
}

/** The link of `--link`, made; `close()` lifts its faults and removes it. */
interface MadeLink {
  readonly spec: LinkSpec;
  readonly veth: VethLink;
  readonly fault: LinkFault;
  /** The fog as the devices see it: broker and server addresses across the link. */
  readonly fog: LocalFog;
}

async function makeLink(spec: LinkSpec, fog: LocalFog): Promise<MadeLink> {
  const veth = await VethLink.open();
  try {
    const fault = await veth.emulate(spec, 1);
    const brokerUrl = await across(veth, fog.brokerUrl, 1883);
    const serverUrl = fog.serverUrl ? await across(veth, fog.serverUrl, 80) : undefined;
    return {
      spec,
      veth,
      fault,
      fog: { ...fog, brokerUrl, ...(serverUrl ? { serverUrl } : {}) },
    };
  } catch (err) {
    await veth.close();
    throw new ConfigError(`--link: cannot emulate the link here: ${(err as Error).message}`);
  }
}

/** With --kubeconfig: the configuration of an --attach run against the DDNNModel's deployment. */
async function fromCluster(
  cfg: ProfileConfig,
): Promise<{ cfg: ProfileConfig; digest: string | null; notes: readonly string[] }> {
  if (cfg.kubeconfig === undefined) return { cfg, digest: null, notes: [] };
  if (cfg.attach || cfg.broker !== undefined || cfg.serverUrl !== undefined)
    throw new ConfigError(
      "--kubeconfig finds the broker and server itself: leave out --attach, --broker and --server-url",
    );
  if (cfg.model === undefined)
    throw new ConfigError("--kubeconfig needs --model NAME, the DDNNModel to profile");
  const slash = cfg.model.indexOf("/");
  const [namespace, name] =
    slash >= 0
      ? [cfg.model.slice(0, slash), cfg.model.slice(slash + 1)]
      : [cfg.namespace, cfg.model];
  const { findDeployment } = await import("../profile/kube.js");
  const d = await findDeployment(cfg.kubeconfig, name, namespace);
  // The DDNNModel asked for this broker: its tiers accept it as the operator tells them to, and so
  // do the profile's agents, said in the notes.
  const insecurity = brokerInsecurity(d.broker, d.brokerUsername !== undefined);
  return {
    cfg: {
      ...cfg,
      attach: true,
      broker: d.broker,
      ...(d.brokerUsername !== undefined
        ? {
            brokerUsername: d.brokerUsername,
            brokerPassword: d.brokerPassword,
            brokerCa: d.brokerCa,
            brokerTlsName: d.brokerTlsName,
          }
        : {}),
      serverUrl: d.serverUrl,
      bundle: cfg.bundle ?? d.bundle,
      model: d.model,
      threshold: { ...d.threshold, ...cfg.threshold },
      ...(d.dtype ? { dtype: d.dtype } : {}),
      ...(d.compression ? { compression: d.compression } : {}),
      deadlineMs: d.deadlineMs,
      insecure: cfg.insecure || insecurity !== undefined,
    },
    digest: d.bundleDigest,
    notes: [
      `kubernetes: DDNNModel ${d.model} from ${cfg.kubeconfig}`,
      ...d.notes,
      ...(insecurity ? [`the model's broker is ${insecurity}, as its tiers use it`] : []),
    ],
  };
}

/** Runs the whole profile on a fog it starts and stops; progress goes to stderr. */
export async function profile(given: ProfileConfig, command: string): Promise<ProfileReport> {
  const progress = (s: string) => process.stderr.write(`${s}\n`);
  const cluster = await fromCluster(given);
  const cfg = cluster.cfg;
  // A multi-view bundle runs as the horizontal DDNN (as `ddnn up` runs it).
  if (cfg.bundle !== undefined && viewsOf((await openBundleSource(cfg.bundle)).manifest).count > 1)
    return profileViews(cfg, await openViewsWorkload(cfg), command);
  const spec = cfg.link === undefined ? null : parseLinkSpec(cfg.link);
  if (spec) {
    const why = await linkUnavailable(spec);
    if (why) throw new ConfigError(why);
    if (cfg.broker !== undefined && !/^mqtt:/.test(cfg.broker))
      throw new ConfigError(
        "--link relays a plain mqtt:// broker only (a TLS broker's name would not match the relay's address)",
      );
  }
  const w = await openWorkload(cfg);
  if (cluster.digest !== null && w.bundle.digest !== cluster.digest)
    throw new ConfigError(
      `--bundle ${cfg.bundle} has digest ${w.bundle.digest}, the deployment runs ${cluster.digest}: leave out --bundle to use the deployment's`,
    );
  const policy = exitPolicyFor(w.manifest, cfg.threshold);
  // With a capacity ramp, the server runs as its own process: its CPU per offload is its own.
  let serverProcess: ServerProcess | undefined;
  const ownProcess = cfg.sloMs !== undefined && !cfg.attach && canReadProcessCpu();
  const fog = await startLocalFog(cfg, w, {
    serverOnly: cfg.serverOnly,
    ...(cfg.attach ? { attach: { serverUrl: cfg.serverUrl } } : {}),
    ...(ownProcess
      ? {
          startServer: async (settings) => {
            serverProcess = await startServerProcess(settings);
            return serverProcess;
          },
        }
      : {}),
  });
  const notes: string[] = [...cluster.notes];
  let link: MadeLink | undefined;
  let linkReport: LinkReport | null = null;
  try {
    progress(`ddnn profile: ${describeFog(cfg, w, fog)}`);
    /** One Device&Server pass: its rows, Table II row, sweep and advice. */
    const pass = async (devices: LocalFog, deviceStageMs?: number | null) => {
      const replay = await replayDevices(cfg, w, devices, {
        probe: true,
        ...(deviceStageMs !== undefined ? { deviceStageMs } : {}),
        onProgress: (r, ms) => progress(liveLine(r, w.count, w.names, ms)),
      });
      const ds = deviceAndServer(replay.rows, w.names, policy.thresholds);
      const traces = traceRows(replay.rows, w.names.length);
      const sweep =
        traces.traces.length > 0
          ? sweepExits(traces, w.names, policy.thresholds, cfg.sweepSteps)
          : null;
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
      return { ...replay, ds, traces, sweep, advice };
    };
    let direct: Awaited<ReturnType<typeof pass>> | undefined;
    if (spec) {
      progress("Device&Server over MQTT without the link first, for comparison");
      direct = await pass(fog);
      progress(`making the link: ${spec.text} between two network namespaces (198.18.0.0/15)`);
      link = await makeLink(spec, fog);
      progress(
        `Device&Server over MQTT across the link (${link.fault.mechanism === "netem" ? "tc netem" : "NFQUEUE delay and loss"}${spec.mbit !== null ? ", tc tbf bandwidth" : ""})`,
      );
    } else progress("Device&Server over MQTT, with probe requests for every exit's answer");
    const devices = link?.fog ?? fog;
    const main = await pass(devices, direct?.deviceStageMs);
    const { rows, wallS, deviceStageMs, ds, traces, sweep, advice } = main;
    const indices = rows.map((r) => r.index).sort((a, b) => a - b);
    const tableII = [ds.row];
    const latencySamples = [
      { configuration: "Device&Server", totalMs: rows.map((r) => r.answer.timings.total) },
    ];
    if (cfg.serverOnly && w.names.length > 1) {
      if (fog.serverOnly) {
        progress("Server Only over MQTT: the image to a server running every stage");
        const mqtt = await serverOnlyMqtt(cfg, w, devices, indices);
        tableII.push(serverOnly(mqtt, w.names, "Server Only", "MQTT"));
        latencySamples.push({ configuration: "Server Only", totalMs: mqtt.map((r) => r.totalMs) });
      } else
        notes.push(
          "attached: no Server Only over MQTT (a deployment has no server running every stage on stage 0's topic)",
        );
      if (devices.serverUrl) {
        progress("Server Only over HTTP (Open Inference Protocol v2)");
        const http = await serverOnlyHttp(cfg, w, devices, indices);
        tableII.push(serverOnly(http, w.names, "Server Only (HTTP)", "HTTP"));
        latencySamples.push({
          configuration: "Server Only (HTTP)",
          totalMs: http.map((r) => r.totalMs),
        });
      } else notes.push("attached without --server-url: no Server Only (HTTP) row");
    }
    if (traces.incomplete > 0)
      notes.push(
        `${traces.incomplete} of ${rows.length} samples lack an exit's answer or a path's time (degraded, or upstream tiers that do not honour probe requests): the sweep, capacity and advice use the other ${traces.traces.length}`,
      );
    notes.push(
      "probe requests (confident samples sent upstream again to learn every exit's answer) ran during the Device&Server pass: they load the server as extra traffic would, and are counted in no column",
    );
    const capacity =
      cfg.sloMs === undefined
        ? null
        : await measureCapacity(
            {
              rows,
              ...(serverProcess ? { serverCpuMs: serverProcess.cpuMs } : {}),
              localCpuMs: () => {
                const c = process.cpuUsage();
                return (c.user + c.system) / 1000;
              },
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
                await replayDevices(cfg, w, devices, {
                  probe: false,
                  deviceStageMs,
                  fps: offeredPerS / cfg.devices,
                  indices: Array.from({ length: samples }, (_, i) => i % w.count),
                })
              ).rows,
            progress,
          );
    if (cfg.sloMs === undefined) notes.push("no --slo-ms: no capacity ramp");
    if (spec && link && direct) {
      const counts = await link.fault.remove();
      const side = (p: typeof main) => {
        // Over the samples answered upstream: a local answer has no communication to move.
        const comm = p.rows
          .filter((r) => !r.answer.degraded && r.answer.stageIndex > 0)
          .map((r) => r.answer.timings.comm)
          .sort((a, b) => a - b);
        return {
          comm: latency(comm),
          commMinMs: comm[0] ?? null,
          commP10Ms: comm[Math.floor(comm.length / 10)] ?? null,
          total: p.ds.row.timingsMs.total,
          bytesPerSample: p.ds.row.bytesPerSample,
          degraded: p.ds.row.degraded,
          // A threshold change alone: what the link moves (the advice may also move stages).
          advisedThresholds: p.advice?.bestHere?.thresholds ?? null,
          advisedOverallAccuracy: p.advice?.bestHere?.overallAccuracy ?? null,
          advisedP95TotalMs: p.advice?.bestHere?.p95TotalMs ?? null,
        };
      };
      linkReport = {
        spec: spec.text,
        rttMs: spec.rttMs,
        mbitPerS: spec.mbit,
        loss: spec.loss,
        mechanism: link.fault.mechanism,
        method: `two network namespaces joined by a veth on 198.18.0.0/15 (no route off this machine); ${link.fault.mechanism === "netem" ? "tc netem" : "NFQUEUE (profile/netem-queue.py, the kernel has no sch_netem)"} delays each direction by half the RTT${spec.loss > 0 ? ` and drops ${(spec.loss * 100).toFixed(2)}% of packets each way` : ""}${spec.mbit !== null ? `; tc tbf limits each direction to ${spec.mbit} Mbit/s` : ""}; the devices' MQTT connections (and the Server Only clients') cross it through a relay in each namespace`,
        packets: counts.packets,
        dropped: counts.dropped,
        withoutLink: side(direct),
        withLink: side(main),
      };
      if (cfg.sloMs === undefined)
        notes.push(
          "--link without --slo-ms: the advised thresholds maximise accuracy alone, which the link does not change; give --slo-ms to see the best threshold move",
        );
    }
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
      link: linkReport,
      notes,
    };
  } finally {
    if (link) {
      if (!linkReport) await link.fault.remove().catch(() => {});
      await link.veth.close();
    }
    await fog.close();
  }
}
