/** The profile report for a terminal: Table II, exits, the sweep, capacity, advice, notes. */
import type {
  ExitReport,
  LatencyStats,
  ProfileReport,
  TableIIRow,
  ViewsReport,
} from "../profile/schema.js";
import { percent, renderTable } from "./table.js";

function ms(x: number | undefined): string {
  return x !== undefined && Number.isFinite(x) ? x.toFixed(3) : "-";
}

const cell = (s: LatencyStats | null) =>
  s ? `${ms(s.mean)} / ${ms(s.p50)} / ${ms(s.p95)} / ${ms(s.p99)}` : "-";

/** What Table II's columns mean in a multi-view run (its Local and Ideal come from elsewhere). */
export const VIEWS_TABLE_II_LEGEND =
  "times: mean / p50 / p95 / p99 over the captures, on view 0's device's clock; T_Server = upstream compute (the gateway's fusion, the server); T_Comm = round trip less upstream compute (the fusion window's wait included); Local = the gateway's local aggregate of the views over every capture; Ideal with the later exits of the captures the aggregate answered from the probe pass (aggregator threshold 0), not counted as traffic";

/** The paper's Table II, one line per configuration; times mean / p50 / p95 / p99 in ms. */
export function renderTableII(rows: readonly TableIIRow[], legend?: string): string {
  return [
    renderTable(
      [
        "configuration",
        "Local",
        "Server",
        "Overall",
        "Ideal",
        "T_Device ms",
        "T_Server ms",
        "T_Comm ms",
        "T_Total ms",
        "bytes/offload",
        "bytes/sample",
      ],
      rows.map((r) => [
        r.configuration.includes(r.transport)
          ? r.configuration
          : `${r.configuration} (${r.transport})`,
        percent(r.accuracy.local),
        percent(r.accuracy.server),
        percent(r.accuracy.overall),
        percent(r.accuracy.ideal),
        cell(r.timingsMs.device),
        cell(r.timingsMs.server),
        cell(r.timingsMs.comm),
        cell(r.timingsMs.total),
        r.bytesPerOffload === null ? "-" : Math.round(r.bytesPerOffload).toString(),
        r.bytesPerSample === null ? "-" : r.bytesPerSample.toFixed(1),
      ]),
    ),
    legend ??
      "times: mean / p50 / p95 / p99 over the samples, on the devices' clocks; T_Server = upstream compute (edge + server, from the tiers' reply timings); T_Comm = round trip less upstream compute; Local and Ideal from probe requests (every exit's answer), not counted as traffic",
    ...rows.flatMap((r) => (r.note ? [`${r.configuration}: ${r.note}`] : [])),
  ].join("\n");
}

/**
 * The horizontal DDNN's accuracy per exit: each device alone (in process), the local aggregate
 * and the later exits (the distributed run), Overall and Ideal, next to the in-process pipeline.
 */
export function renderViewsAccuracy(
  v: ViewsReport,
  row: TableIIRow,
  exits: readonly ExitReport[],
): string {
  const dash = "-";
  return [
    renderTable(
      ["accuracy", "distributed run", "exit rate", "accuracy (exited)", "in process"],
      [
        ...v.devices.map((d) => [
          `view ${d.view}'s device alone`,
          dash,
          dash,
          dash,
          `${percent(d.aloneAccuracy)} (Overall with only this view ${percent(d.aloneOverall)})`,
        ]),
        ...exits.map((e, s) => [
          s === 0
            ? `${e.stage}: local aggregate of ${v.count} views (${v.localAggregation})`
            : e.stage,
          percent(e.accuracyAll),
          percent(e.exitRate),
          percent(e.accuracyExited),
          s === 0
            ? percent(v.inProcess.local)
            : s === exits.length - 1
              ? `${percent(v.inProcess.server)} (exited)`
              : dash,
        ]),
        ["Overall", percent(row.accuracy.overall), dash, dash, percent(v.inProcess.overall)],
        ["Ideal", percent(row.accuracy.ideal), dash, dash, percent(v.inProcess.ideal)],
      ],
    ),
    `the run gave the in-process pipeline's exit and label for ${percent(v.agreementWithInProcess)} of ${v.captures} captures (a degraded answer does not agree); fused from all ${v.count} views ${v.capturesFusedComplete}/${v.captures}; the same answer on every device ${v.sameAnswerOnEveryDevice}/${v.captures}; in process, the aggregate's Overall beats the best device alone (view ${v.bestSingleView}) by ${((v.inProcess.overall - (v.devices[v.bestSingleView]?.aloneOverall ?? 0)) * 100).toFixed(2)} points`,
    `per device: ${v.devices.map((d) => `view ${d.view} ${d.answered} answers, ${d.degraded} degraded, T_Total p50 ${ms(d.total?.p50)} / p95 ${ms(d.total?.p95)} ms`).join("; ")}`,
    `bytes: ${v.bytes.viewFrame === null ? "-" : Math.round(v.bytes.viewFrame)} per view frame (device -> gateway), ${v.bytes.forwardedFrame === null ? "-" : Math.round(v.bytes.forwardedFrame)} per forwarded request (gateway -> next stage, ${v.bytes.forwarded} sent), ${v.bytes.perCapture === null ? "-" : v.bytes.perCapture.toFixed(1)} per capture in all`,
    v.probePass
      ? `Ideal and the later exits of the captures the aggregate answered: the probe pass (aggregator threshold 0, ${v.probePass.answered} answers, ${v.probePass.degraded} degraded, ${v.probePass.differed} fused otherwise than the run, ${v.probePass.wallSeconds.toFixed(1)} s)`
      : "no probe pass: Ideal not measured",
  ].join("\n");
}

export function renderProfileText(r: ProfileReport): string {
  const lines = [
    "",
    `ddnn profile: ${r.model.name} ${r.model.version} (${r.model.stages.join(" -> ")}), ${r.run.samples} samples, ${r.run.devices} devices at ${r.run.fps} fps, device slowdown ${r.run.deviceSlowdown}x, features ${r.run.encoding.dtype}+${r.run.encoding.compression}${r.link ? `, across the link ${r.link.spec}` : ""}, ${r.run.wallSeconds.toFixed(1)} s`,
    "",
    renderTableII(r.tableII, r.views ? VIEWS_TABLE_II_LEGEND : undefined),
    ...(r.views && r.tableII[0]
      ? [
          "",
          `horizontal DDNN: ${r.views.count} devices, one view each, fused by the gateway (${r.views.localAggregation} logits, ${r.views.featureAggregation} features, window ${r.views.fusionWindowMs} ms), ${r.views.captures} captures:`,
          renderViewsAccuracy(r.views, r.tableII[0], r.exits),
        ]
      : []),
    "",
    renderTable(
      ["exit", "threshold", "exit rate", "accuracy (all)", "accuracy (exited)"],
      r.exits.map((e) => [
        e.stage,
        e.threshold === null ? "always" : e.threshold.toString(),
        percent(e.exitRate),
        percent(e.accuracyAll),
        percent(e.accuracyExited),
      ]),
    ),
  ];
  if (r.sweep) {
    for (const s of r.sweep.exits) {
      lines.push(
        "",
        `sweep of the ${s.exit} exit${r.views && s.exit === r.model.stages[0] ? " (the local aggregate)" : ""} (now ${s.currentThreshold}), ${r.sweep.samples} ${r.views ? "captures, from the run and its probe pass" : "samples, from the one probe pass"}:`,
        renderTable(
          [
            "threshold",
            "exit rate",
            "Overall",
            "mean T_Total ms",
            "p95 T_Total ms",
            "bytes/sample",
          ],
          s.points.map((p) => [
            p.threshold.toFixed(3),
            percent(p.exitRate),
            percent(p.overallAccuracy),
            ms(p.meanTotalMs),
            ms(p.p95TotalMs),
            p.bytesPerSample.toFixed(1),
          ]),
        ),
      );
    }
  }
  if (r.capacity) {
    const c = r.capacity;
    lines.push(
      "",
      `capacity of one server replica (${c.serverWorkers} workers, ${c.serverCores} cores): ${ms(c.serverMsPerOffload)} ms ${c.serverCpuSource === "process" ? "of the server process's CPU" : "server compute (reply timings)"} per offload x offload ratio ${percent(c.offloadRatio)} -> predicted ${Math.round(c.predictedSamplesPerS)} samples/s = ${c.predictedDevicesPerReplica.toFixed(1)} devices at ${c.framesPerS} fps; on this machine (${ms(c.cpuMsPerSample)} ms CPU per sample, all processes) ${Math.round(c.predictedHerePerS)} samples/s`,
      renderTable(
        [
          "offered /s",
          "achieved /s",
          "p50 T_Total ms",
          "p99 T_Total ms",
          "degraded",
          "server CPU ms/offload",
          "CPU ms/sample",
        ],
        c.steps.map((s) => [
          s.offeredPerS.toFixed(0),
          s.achievedPerS.toFixed(0),
          ms(s.p50TotalMs),
          ms(s.p99TotalMs),
          s.degraded.toString(),
          ms(s.serverCpuMsPerOffload ?? undefined),
          ms(s.cpuMsPerSample ?? undefined),
        ]),
      ),
      `measured saturation (p99 T_Total > ${c.sloMs} ms, or under 90% of the offered load carried): ${c.measuredSaturationPerS === null ? "not reached" : `at ${Math.round(c.measuredSaturationPerS)} samples/s offered, carrying ${Math.round(c.measuredThroughputPerS ?? 0)} samples/s = ${c.measuredDevicesPerReplica?.toFixed(1)} devices; predicted here / measured = ${c.predictionOverMeasured?.toFixed(2)}`}`,
      c.note,
    );
  }
  if (r.link) {
    const l = r.link;
    const t = (s: LatencyStats | null) => (s ? `${ms(s.p50)} / ${ms(s.p95)}` : "-");
    const th = (x: Readonly<Record<string, number>> | null) =>
      x
        ? Object.entries(x)
            .map(([k, v]) => `${k}=${v}`)
            .join(" ")
        : "none meets the goal";
    const a = l.withoutLink;
    const b = l.withLink;
    const dp50 = (b.comm?.p50 ?? Number.NaN) - (a.comm?.p50 ?? Number.NaN);
    const dmin = (b.commMinMs ?? Number.NaN) - (a.commMinMs ?? Number.NaN);
    lines.push(
      "",
      `link ${l.spec}: ${l.method}; ${l.packets} packets, ${l.dropped} dropped`,
      renderTable(
        [
          "Device&Server",
          "T_Comm min / p10 / p50 / p95 ms (offloads)",
          "T_Total p50 / p95 ms",
          "bytes/sample",
          "degraded",
          "best thresholds (placement kept)",
          "its Overall",
          "its p95 T_Total ms",
        ],
        (
          [
            ["without the link", a],
            ["across the link", b],
          ] as const
        ).map(([name, side]) => {
          return [
            name,
            `${ms(side.commMinMs ?? undefined)} / ${ms(side.commP10Ms ?? undefined)} / ${t(side.comm)}`,
            t(side.total),
            side.bytesPerSample === null ? "-" : side.bytesPerSample.toFixed(1),
            side.degraded.toString(),
            th(side.advisedThresholds),
            percent(side.advisedOverallAccuracy),
            ms(side.advisedP95TotalMs ?? undefined),
          ];
        }),
      ),
      `T_Comm of the offloads moved by ${ms(dmin)} ms at its least, ${ms(dp50)} ms at p50 (link RTT ${l.rttMs} ms); the rest of this report is the pass across the link`,
    );
  }
  if (r.advice) {
    lines.push("", "advice:", ...r.advice.summary.map((s) => `  ${s}`));
    if (r.advice.patchYaml) lines.push("", r.advice.patchYaml);
  }
  if (r.notes.length) lines.push("", ...r.notes.map((n) => `note: ${n}`));
  return lines.join("\n");
}
