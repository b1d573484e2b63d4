/** The profile report for a terminal: Table II, exits, the sweep, capacity, advice, notes. */
import type { LatencyStats, ProfileReport, TableIIRow } from "../profile/schema.js";
import { percent, renderTable } from "./table.js";

function ms(x: number | undefined): string {
  return x !== undefined && Number.isFinite(x) ? x.toFixed(3) : "-";
}

const cell = (s: LatencyStats | null) =>
  s ? `${ms(s.mean)} / ${ms(s.p50)} / ${ms(s.p95)} / ${ms(s.p99)}` : "-";

/** The paper's Table II, one line per configuration; times mean / p50 / p95 / p99 in ms. */
export function renderTableII(rows: readonly TableIIRow[]): string {
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
    "times: mean / p50 / p95 / p99 over the samples, on the devices' clocks; T_Server = upstream compute (edge + server, from the tiers' reply timings); T_Comm = round trip less upstream compute; Local and Ideal from probe requests (every exit's answer), not counted as traffic",
    ...rows.flatMap((r) => (r.note ? [`${r.configuration}: ${r.note}`] : [])),
  ].join("\n");
}

export function renderProfileText(r: ProfileReport): string {
  const lines = [
    "",
    `ddnn profile: ${r.model.name} ${r.model.version} (${r.model.stages.join(" -> ")}), ${r.run.samples} samples, ${r.run.devices} devices at ${r.run.fps} fps, device slowdown ${r.run.deviceSlowdown}x, features ${r.run.encoding.dtype}+${r.run.encoding.compression}${r.link ? `, across the link ${r.link.spec}` : ""}, ${r.run.wallSeconds.toFixed(1)} s`,
    "",
    renderTableII(r.tableII),
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
        `sweep of the ${s.exit} exit (now ${s.currentThreshold}), ${r.sweep.samples} samples, from the one probe pass:`,
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
