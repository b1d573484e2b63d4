/**
 * `ddnn profile` on a multi-view bundle: the horizontal DDNN as it runs distributed (K device
 * agents replaying their views from one shared start, the gateway fusing every capture, the
 * server, through the broker, as `ddnn up --views` runs it), then a probe pass of the same
 * captures with the aggregator's threshold 0 for the later exits' answers, and the in-process
 * pipeline for each device alone. `ddnn up --views` runs the same passes (`runHorizontal`).
 */
import { ConfigError } from "../core/config.js";
import { connectBroker, whenConnected } from "../core/runtime/mqtt.js";
import { brokerClientOptions, resolveModel } from "../core/runtime/tier.js";
import { requestTopic, viewsTopic } from "../core/topics.js";
import { viewsOf } from "../core/views.js";
import { gatewayConfig } from "../gateway/gateway.js";
import { advise } from "../profile/advise.js";
import { PROFILE_FORMAT, type ProfileReport } from "../profile/schema.js";
import { sweepExits } from "../profile/sweep.js";
import {
  type HorizontalRun,
  horizontalRun,
  VIEWS_SWEEP_METHOD,
  type ViewsPass,
  type ViewsReference,
  viewsPath,
  viewsReference,
  viewsTraces,
} from "../profile/views.js";
import {
  type LocalFog,
  type LocalFogConfig,
  liveLine,
  replayViewDevices,
  startLocalFog,
  type ViewsWorkload,
} from "./local-fog.js";
import type { ProfileConfig } from "./profile.js";

/** The least deadline of the probe pass's captures, ms. */
const PROBE_DEADLINE_MS = 10_000;

/**
 * Counts the bytes of every frame published on `topics` while it runs (a plain subscriber: it
 * sees what the broker carried, a view frame whose answer came too late included).
 */
async function tapFrames(
  cfg: LocalFogConfig,
  fog: LocalFog,
  topics: readonly string[],
): Promise<{ readonly bytes: readonly number[][]; close(): Promise<void> }> {
  const client = connectBroker({
    url: fog.brokerUrl,
    clientId: `ddnn-profile-tap-${process.pid}`,
    ...brokerClientOptions(cfg),
  });
  const bytes = topics.map((): number[] => []);
  try {
    await whenConnected(client);
    client.on("message", (t, payload) => {
      const i = topics.indexOf(t);
      if (i >= 0) bytes[i]!.push(payload.length);
    });
    await client.subscribeAsync([...topics], { qos: 0 });
  } catch (err) {
    await client.endAsync(true);
    throw err;
  }
  return { bytes, close: () => client.endAsync() };
}

export interface Horizontal {
  readonly reference: ViewsReference;
  readonly main: ViewsPass;
  readonly probe: ViewsPass | null;
  readonly run: HorizontalRun;
  readonly embedded: boolean;
  readonly fusionWindowMs: number;
}

/**
 * The in-process reference, the run, and (with `probe`, for more than one stage) the probe pass,
 * each pass on a fog of its own (`ddnn up --views`, `ddnn profile`); progress goes to `progress`.
 */
export async function runHorizontal(
  cfg: LocalFogConfig,
  w: ViewsWorkload,
  options: { readonly probe: boolean; readonly progress: (s: string) => void },
): Promise<Horizontal> {
  const { progress } = options;
  const layout = viewsOf(w.manifest);
  const k = w.names.length;
  const fusionWindowMs =
    cfg.fusionWindowMs ?? gatewayConfig.fields.fusionWindowMs.schema.parse(undefined);
  const reference = await viewsReference(
    w.bundlePath,
    cfg.threshold,
    w.pixels,
    w.count,
    w.truth,
    w.names,
  );
  let embedded = false;
  const pass = async (c: LocalFogConfig): Promise<ViewsPass> => {
    const fog = await startLocalFog({ ...c, serverOnly: false }, w);
    embedded = fog.embedded;
    try {
      const model = resolveModel(w.manifest, c.model);
      const tap = await tapFrames(c, fog, [
        viewsTopic(model),
        ...(k > 1 ? [requestTopic(model, w.names[1]!)] : []),
      ]);
      try {
        const r = await replayViewDevices(c, w, fog, w.imagePaths, {
          onProgress: (rows, ms) => progress(liveLine(rows, w.count, w.names, ms)),
        });
        return {
          rows: r.rows,
          wallS: r.wallS,
          viewBytes: [...tap.bytes[0]!],
          forwardedBytes: [...(tap.bytes[1] ?? [])],
        };
      } finally {
        await tap.close();
      }
    } finally {
      await fog.close();
    }
  };
  progress(
    `${w.manifest.name} ${w.manifest.version}: ${layout.count} devices (one view each) -> gateway fusion (${layout.localAggregation} logits, ${layout.featureAggregation} features, window ${fusionWindowMs} ms) -> ${w.names.slice(1).join(" -> ")}, ${w.count} captures at ${cfg.fps} fps`,
  );
  progress("the run: every device's view of every capture, fused by the gateway");
  const main = await pass(cfg);
  let probe: ViewsPass | null = null;
  if (options.probe && k > 1) {
    progress(
      "probe pass: the same captures with the aggregator's threshold 0, so every capture goes on (the later exits' answers for Ideal and the sweep)",
    );
    const never = Object.fromEntries(w.names.slice(0, -1).map((n) => [n, 0]));
    // A measurement, not an answer anyone waits for: late is still useful, lost is not (the
    // deadline of the one-view probe requests, device-agent/agent.ts).
    probe = await pass({
      ...cfg,
      threshold: { ...cfg.threshold, ...never },
      deadlineMs: Math.max(cfg.deadlineMs, PROBE_DEADLINE_MS),
    });
  }
  const run = horizontalRun({
    main,
    probe,
    names: w.names,
    thresholds: reference.policy.thresholds,
    reference,
    layout,
    fusionWindowMs,
  });
  return { reference, main, probe, run, embedded, fusionWindowMs };
}

/** `ddnn profile` of a multi-view bundle (`cli/profile.ts` sends it here). */
export async function profileViews(
  cfg: ProfileConfig,
  w: ViewsWorkload,
  command: string,
): Promise<ProfileReport> {
  const refused = [
    cfg.attach ? "--attach" : "",
    cfg.kubeconfig !== undefined ? "--kubeconfig" : "",
    cfg.link !== undefined ? "--link" : "",
  ].filter(Boolean);
  if (refused.length)
    throw new ConfigError(
      `${refused.join(", ")}: not for a multi-view bundle yet (${w.manifest.name} has ${viewsOf(w.manifest).count} views); profile it on a fog started here`,
    );
  const progress = (s: string) => process.stderr.write(`${s}\n`);
  progress(`ddnn profile: the horizontal DDNN, ${w.manifest.name}`);
  const h = await runHorizontal(cfg, w, { probe: true, progress });
  const { run, reference, main, probe } = h;
  const names = w.names;
  const thresholds = reference.policy.thresholds;
  const traces = viewsTraces(run, main, probe, names.length);
  const sweep =
    traces.traces.length > 0 && names.length > 1
      ? sweepExits(traces, names, thresholds, cfg.sweepSteps, {
          path: viewsPath(traces, run.views.bytes.forwardedFrame),
          method: VIEWS_SWEEP_METHOD,
        })
      : null;
  // Thresholds only: the stages stay where they are (no placement of a view's stage is predicted).
  const advice =
    traces.traces.length > 0 && names.length > 1
      ? advise(
          traces,
          w.manifest,
          thresholds,
          {
            sloMs: cfg.sloMs ?? null,
            bytesPerSecond: cfg.bytesPerSecond ?? null,
            fps: cfg.fps,
            steps: cfg.sweepSteps,
            deviceSlowdown: cfg.deviceSlowdown,
          },
          {
            path: viewsPath(traces, run.views.bytes.forwardedFrame),
            placements: false,
            bytesUnit: `B/s of every view and forwarded request (${run.views.count} devices)`,
            source: "captures of the run and its probe pass",
          },
        )
      : null;
  const notes: string[] = [
    `multi-view bundle: ${run.views.count} devices, one view each (--devices does not apply); a capture's answer is view 0's device's (every device got the same for ${run.views.sameAnswerOnEveryDevice} of ${run.views.captures}); Local is the gateway's local aggregate exit; each device alone is measured in process (views section)`,
    "bytes, as a subscriber on the views topic and the next stage's topic saw them: /offload is one device's view frame to the gateway; /sample is every view frame and every request the gateway forwarded, per capture",
    "T_Server holds the gateway's fusion compute; T_Comm holds the fusion window's wait for the capture's other views",
    "no Server Only rows: no server tier runs every view's device stage",
    `advice: the thresholds only, the stages where they are; --bytes-per-second bounds every view frame and forwarded request per second, all ${run.views.count} devices together; ${cfg.sloMs === undefined ? "no --slo-ms: no latency bound" : "no capacity ramp for a multi-view bundle yet (--slo-ms bounds the advice only)"}`,
  ];
  if (probe)
    notes.push(
      `probe pass: the same captures with the aggregator's threshold 0 (${probe.wallS.toFixed(1)} s), for the later exits' answers of the captures the aggregate answered (Ideal, the sweep); counted in no other column${run.views.probePass?.differed ? `; ${run.views.probePass.differed} captures fused other views or another aggregate in it, their later exits unused` : ""}`,
    );
  if (traces.incomplete > 0)
    notes.push(
      `${traces.incomplete} of ${run.captures.length} captures lack an exit's answer or a path's time (degraded, or lost in a pass): the sweep uses the other ${traces.traces.length}`,
    );
  return {
    format: PROFILE_FORMAT,
    generatedAt: new Date().toISOString(),
    command,
    model: {
      name: w.manifest.name,
      version: w.manifest.version,
      digest: w.bundle.digest,
      stages: names,
      thresholds: Object.fromEntries(
        names.flatMap((n, i) => {
          const t = thresholds[i];
          return t === undefined ? [] : [[n, t]];
        }),
      ),
    },
    run: {
      samples: run.captures.length,
      devices: run.views.count,
      fps: cfg.fps,
      deviceSlowdown: cfg.deviceSlowdown,
      deviceStageMs: null,
      encoding: { dtype: cfg.dtype, compression: cfg.compression },
      broker: h.embedded ? "embedded" : "external",
      wallSeconds: main.wallS,
    },
    tableII: [run.ds.row],
    exits: run.ds.exits,
    probe: run.ds.probe,
    latencySamples: [
      {
        configuration: "Device&Server",
        totalMs: run.captures.map((r) => r.answer.timings.total),
      },
    ],
    sweep,
    capacity: null,
    advice,
    link: null,
    views: run.views,
    notes,
  };
}
