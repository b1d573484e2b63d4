/** The profile report as HTML: `ddnn profile --html FILE` maps its report onto profile/html.ts's input. */
import { type ProfileHtmlInput, renderProfileHtml, type ViewsRun } from "./html.js";
import type { LinkReport, LinkSide, ProfileReport, ViewsReport } from "./schema.js";

const ms = (x: number) => `${x.toFixed(3)} ms`;
const pct = (x: number) => `${(x * 100).toFixed(2)}%`;

/** `--link`: the link, and what it moved (T_Comm of the offloads, the advised thresholds). */
function linkSettings(l: LinkReport): { label: string; value: string }[] {
  const side = (x: LinkSide) =>
    `T_Comm of the offloads p50 ${x.comm ? ms(x.comm.p50) : "-"}, p95 ${x.comm ? ms(x.comm.p95) : "-"}; advised ${
      x.advisedThresholds
        ? Object.entries(x.advisedThresholds)
            .map(([s, t]) => `${s} ${t}`)
            .join(", ")
        : "none meets the goal"
    }`;
  return [
    { label: "link", value: `${l.spec}: ${l.method}; ${l.packets} packets, ${l.dropped} dropped` },
    { label: "without the link", value: side(l.withoutLink) },
    { label: "across the link", value: side(l.withLink) },
  ];
}

/** A multi-view run's accuracy per exit and fusion figures, as the text report gives them. */
function viewsRun(v: ViewsReport, r: ProfileReport): ViewsRun {
  const row = r.tableII[0];
  const last = r.exits.length - 1;
  const bytes = (x: number | null) => (x === null ? "-" : `${Math.round(x)} B`);
  return {
    rows: [
      ...v.devices.map((d) => ({
        name: `view ${d.view}'s device alone`,
        distributed: null,
        inProcess: d.aloneAccuracy,
      })),
      ...r.exits.map((e, s) => ({
        name: s === 0 ? `${e.stage}: local aggregate of ${v.count} views` : e.stage,
        distributed: e.accuracyAll,
        exitRate: e.exitRate,
        accuracyExited: e.accuracyExited,
        inProcess: s === 0 ? v.inProcess.local : null,
      })),
      {
        name: "Overall",
        distributed: row?.accuracy.overall ?? null,
        inProcess: v.inProcess.overall,
      },
      { name: "Ideal", distributed: row?.accuracy.ideal ?? null, inProcess: v.inProcess.ideal },
    ],
    facts: [
      {
        label: "fusion",
        value: `${v.count} devices, one view each; ${v.localAggregation} of the exit logits, ${v.featureAggregation} of the features, window ${v.fusionWindowMs} ms`,
      },
      {
        label: "agreement with the in-process pipeline",
        value: `${pct(v.agreementWithInProcess)} of ${v.captures} captures (same exit and label)`,
      },
      {
        label: "captures fused from every view",
        value: `${v.capturesFusedComplete} of ${v.captures}; the same answer on every device ${v.sameAnswerOnEveryDevice}`,
      },
      ...v.devices.map((d) => ({
        label: `view ${d.view}'s device`,
        value: `${d.answered} answers, ${d.degraded} degraded, T_Total p50 ${d.total ? ms(d.total.p50) : "-"}, p95 ${d.total ? ms(d.total.p95) : "-"}; Overall with only its view (in process) ${pct(d.aloneOverall)}`,
      })),
      {
        label: "bytes",
        value: `${bytes(v.bytes.viewFrame)} per view frame, ${bytes(v.bytes.forwardedFrame)} per forwarded request (${v.bytes.forwarded}), ${bytes(v.bytes.perCapture)} per capture`,
      },
      ...(last > 0 && v.inProcess.server !== null
        ? [
            {
              label: `${r.exits[last]!.stage} (exited), in process`,
              value: pct(v.inProcess.server),
            },
          ]
        : []),
      {
        label: "probe pass",
        value: v.probePass
          ? `aggregator threshold 0: ${v.probePass.answered} answers, ${v.probePass.degraded} degraded, ${v.probePass.differed} fused otherwise than the run, ${v.probePass.wallSeconds.toFixed(1)} s`
          : "none: Ideal not measured",
      },
    ],
  };
}

export function htmlInput(r: ProfileReport): ProfileHtmlInput {
  const advised = r.advice?.thresholds ?? {};
  return {
    model: `${r.model.name} ${r.model.version}`,
    generatedAt: r.generatedAt,
    command: r.command,
    settings: [
      { label: "stages", value: r.model.stages.join(" -> ") },
      {
        label: "thresholds",
        value: Object.entries(r.model.thresholds)
          .map(([s, t]) => `${s} ${t}`)
          .join(", "),
      },
      { label: "samples", value: String(r.run.samples) },
      {
        label: "devices",
        value: `${r.run.devices}${r.views ? ` (one view each of a ${r.views.count}-view bundle)` : ""} at ${r.run.fps} frames/s each`,
      },
      { label: "device slowdown", value: `${r.run.deviceSlowdown}x` },
      {
        label: "features on the wire",
        value: `${r.run.encoding.dtype} + ${r.run.encoding.compression}`,
      },
      { label: "broker", value: r.run.broker },
      ...(r.link ? linkSettings(r.link) : [{ label: "link", value: "none (loopback)" }]),
      { label: "bundle digest", value: r.model.digest },
    ],
    notes: r.notes,
    tableII: r.tableII.map((row) => ({
      configuration: row.configuration,
      transport: row.transport,
      samples: row.samples,
      accuracy: row.accuracy,
      timingsMs: row.timingsMs,
      bytesPerOffload: row.bytesPerOffload,
      bytesPerSample: row.bytesPerSample,
      exitRates: row.exitRates,
      ...(row.note ? { note: row.note } : {}),
    })),
    ...(r.views ? { views: viewsRun(r.views, r) } : {}),
    latencySamples: r.latencySamples,
    sweep: r.sweep
      ? r.sweep.exits.map((e) => ({
          exit: e.exit,
          currentThreshold: e.currentThreshold,
          ...(advised[e.exit] !== undefined ? { advisedThreshold: advised[e.exit] } : {}),
          points: e.points,
        }))
      : { notMeasured: "no sample had every exit's answer and path time" },
    capacity: r.capacity
      ? {
          sloMs: r.capacity.sloMs,
          points: r.capacity.steps.map((s) => ({
            offeredPerS: s.offeredPerS,
            achievedPerS: s.achievedPerS,
            p99TotalMs: s.p99TotalMs,
          })),
          measuredSaturationPerS: r.capacity.measuredSaturationPerS,
          // The ramp ran here, where the devices share the machine: the prediction it can meet.
          predictedSaturationPerS: r.capacity.predictedHerePerS,
          facts: [
            {
              label:
                r.capacity.serverCpuSource === "process"
                  ? "server process CPU per offload"
                  : "server compute per offload (reply timings)",
              value: ms(r.capacity.serverMsPerOffload),
            },
            { label: "offload ratio", value: pct(r.capacity.offloadRatio) },
            { label: "server workers", value: String(r.capacity.serverWorkers) },
            {
              label: "predicted devices per replica",
              value: `${r.capacity.predictedDevicesPerReplica.toFixed(1)} at ${r.capacity.framesPerS} frames/s`,
            },
            {
              label: "predicted on this machine (all processes' CPU)",
              value: `${r.capacity.predictedHerePerS.toFixed(0)} samples/s`,
            },
            {
              label: "measured devices per replica",
              value:
                r.capacity.measuredDevicesPerReplica === null
                  ? "saturation not reached"
                  : r.capacity.measuredDevicesPerReplica.toFixed(1),
            },
          ],
          note: r.capacity.note,
        }
      : {
          notMeasured: r.views
            ? "no capacity ramp for a multi-view bundle yet"
            : "no --slo-ms given: no capacity ramp",
        },
    advice: r.advice
      ? {
          summary: r.advice.summary,
          ...(r.advice.predicted
            ? {
                facts: [
                  { label: "predicted Overall", value: pct(r.advice.predicted.overallAccuracy) },
                  { label: "predicted p95 T_Total", value: ms(r.advice.predicted.p95TotalMs) },
                  {
                    label: "predicted uplink per device",
                    value: `${r.advice.predicted.bytesPerSecond.toFixed(0)} B/s`,
                  },
                ],
              }
            : {}),
          patchYaml: r.advice.patchYaml,
        }
      : {
          notMeasured: "no sample had every exit's answer and path time",
        },
  };
}

export function renderReportHtml(r: ProfileReport): Promise<string> {
  return renderProfileHtml(htmlInput(r));
}
