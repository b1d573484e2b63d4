/**
 * The profile report's charts as Vega-Lite specifications, one pure function per chart from the
 * report's input, and `renderSvg` that draws a specification to an SVG string in Node (Vega's
 * headless view: no browser, no canvas, no network). Every chart's data is inline.
 */
import * as vega from "vega";
import { compile, type TopLevelSpec } from "vega-lite";
import { percentile } from "../core/stats.js";
import type {
  CapacityRun,
  ExitSweep,
  LatencySamples,
  TableIIRow,
  ViewsAccuracyRow,
} from "./html.js";

/** One colour per tier, the same in every chart and in the table's legend. */
export const TIER_COLOURS = {
  T_Device: "#4c78a8",
  T_Comm: "#f58518",
  T_Server: "#54a24b",
} as const;

const FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

/** Shared look: readable fonts, no frame around the plot area, white background. */
const CONFIG = {
  font: FONT,
  background: "white",
  view: { stroke: null },
  axis: { labelFontSize: 11, titleFontSize: 12, grid: true, gridColor: "#e5e5e5" },
  legend: { labelFontSize: 11, titleFontSize: 12, orient: "bottom", labelLimit: 360 },
  title: { fontSize: 14, anchor: "start", subtitleFontSize: 11, subtitleColor: "#555" },
  range: { category: { scheme: "tableau10" } },
} as const;

/** Draws a Vega-Lite specification to a standalone SVG string. */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

const pct = (x: number) => x * 100;

/**
 * Overall accuracy against the exit rate of each exit, as the exit's threshold moves from 0 to 1
 * (the other exits held where the sweep held them); the accuracy of the samples that left at the
 * exit is drawn dashed where the sweep measured it. A ring marks each exit's current threshold.
 */
export function exitAccuracySpec(sweep: readonly ExitSweep[]): TopLevelSpec {
  const values = sweep.flatMap((s) =>
    s.points.flatMap((p) => [
      {
        exit: s.exit,
        threshold: p.threshold,
        exitRate: pct(p.exitRate),
        accuracy: pct(p.overallAccuracy),
        series: "Overall accuracy",
      },
      ...(p.exitAccuracy === null || p.exitAccuracy === undefined
        ? []
        : [
            {
              exit: s.exit,
              threshold: p.threshold,
              exitRate: pct(p.exitRate),
              accuracy: pct(p.exitAccuracy),
              series: "accuracy of the samples exiting here",
            },
          ]),
    ]),
  );
  const current = sweep.flatMap((s) => {
    const p = nearest(s, s.currentThreshold);
    return p
      ? [
          {
            exit: s.exit,
            threshold: p.threshold,
            exitRate: pct(p.exitRate),
            accuracy: pct(p.overallAccuracy),
          },
        ]
      : [];
  });
  const x = {
    field: "exitRate",
    type: "quantitative" as const,
    title: "exit rate at this exit (% of samples)",
    scale: { domain: [0, 100] },
  };
  const y = {
    field: "accuracy",
    type: "quantitative" as const,
    title: "accuracy (%)",
    scale: { zero: false },
  };
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    config: CONFIG,
    title: {
      text: "Accuracy against local exit rate",
      subtitle: "each point one threshold of the sweep; ring: the current threshold",
    },
    width: 520,
    height: 300,
    layer: [
      {
        data: { values },
        mark: { type: "line", strokeWidth: 2 },
        encoding: {
          x,
          y,
          color: { field: "exit", type: "nominal", title: "exit" },
          strokeDash: {
            field: "series",
            type: "nominal",
            title: null,
            sort: ["Overall accuracy"],
            legend: { symbolType: "stroke", symbolSize: 400 },
          },
          order: { field: "threshold", type: "quantitative" },
        },
      },
      {
        // Points apart from the line, so the dash legend draws strokes rather than filled dots.
        data: { values },
        mark: { type: "point", size: 18, filled: true },
        encoding: { x, y, color: { field: "exit", type: "nominal", title: "exit" } },
      },
      {
        data: { values: current },
        mark: { type: "point", size: 160, strokeWidth: 2, filled: false },
        encoding: { x, y, color: { field: "exit", type: "nominal", title: "exit" } },
      },
    ],
  };
}

/** The sweep point nearest a threshold (the sweep's grid need not hold it exactly). */
function nearest(s: ExitSweep, threshold: number | undefined) {
  if (threshold === undefined || s.points.length === 0) return undefined;
  return s.points.reduce((best, p) =>
    Math.abs(p.threshold - threshold) < Math.abs(best.threshold - threshold) ? p : best,
  );
}

/**
 * The horizontal DDNN's accuracy per exit: each device alone, the local aggregate, the later
 * exits, Overall and Ideal, the distributed run's bar next to the in-process pipeline's.
 */
export function viewsAccuracySpec(rows: readonly ViewsAccuracyRow[]): TopLevelSpec {
  const values = rows.flatMap((r) =>
    (
      [
        ["distributed run", r.distributed],
        ["in process", r.inProcess],
      ] as const
    ).flatMap(([source, a]) =>
      a === null || !Number.isFinite(a) ? [] : [{ name: r.name, source, accuracy: pct(a) }],
    ),
  );
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    config: CONFIG,
    title: {
      text: "Accuracy per exit",
      subtitle:
        "each device alone, the local aggregate and later exits (over every capture), Overall, Ideal",
    },
    width: 520,
    height: { step: 14 },
    data: { values },
    mark: { type: "bar" },
    encoding: {
      y: {
        field: "name",
        type: "nominal",
        title: null,
        sort: rows.map((r) => r.name),
        axis: { labelLimit: 320 },
      },
      yOffset: { field: "source", type: "nominal" },
      x: {
        field: "accuracy",
        type: "quantitative",
        title: "accuracy (%)",
        scale: { domain: [0, 100] },
      },
      color: { field: "source", type: "nominal", title: null },
    },
  };
}

/** Mean time per tier stacked per configuration: where a sample's time goes, on average. */
export function tierLatencySpec(rows: readonly TableIIRow[]): TopLevelSpec {
  const values = rows.flatMap((r) =>
    (
      [
        ["T_Device", r.timingsMs.device],
        ["T_Comm", r.timingsMs.comm],
        ["T_Server", r.timingsMs.server],
      ] as const
    ).flatMap(([tier, s], order) =>
      s && Number.isFinite(s.mean)
        ? [{ configuration: r.configuration, tier, order, ms: s.mean }]
        : [],
    ),
  );
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    config: CONFIG,
    title: {
      text: "Mean time per tier",
      subtitle: "T_Device + T_Comm + T_Server per configuration (means over all samples, ms)",
    },
    width: 520,
    height: { step: 34 },
    data: { values },
    mark: { type: "bar" },
    encoding: {
      y: {
        field: "configuration",
        type: "nominal",
        title: null,
        sort: rows.map((r) => r.configuration),
      },
      x: { field: "ms", type: "quantitative", title: "mean time (ms)", stack: "zero" },
      color: {
        field: "tier",
        type: "nominal",
        title: "tier",
        scale: { domain: Object.keys(TIER_COLOURS), range: Object.values(TIER_COLOURS) },
      },
      order: { field: "order", type: "quantitative" },
    },
  };
}

/**
 * Histogram of T_Total, one row per configuration, with its p50, p95 and p99 as rules. A long
 * tail (a pause far beyond every p99) would squeeze the rest into a few bins: samples beyond 1.5
 * times the largest p99 are counted in the last bin, and the subtitle says how many.
 */
export function latencyHistogramSpec(samples: readonly LatencySamples[]): TopLevelSpec {
  const rules = samples.flatMap(statRules);
  const cap = 1.5 * Math.max(0, ...rules.filter((r) => r.stat === "p99").map((r) => r.ms));
  const beyond = samples.reduce((n, s) => n + s.totalMs.filter((ms) => ms > cap).length, 0);
  // Just under the cap, so a clamped sample falls in the last bin rather than past it.
  const last = cap * (1 - 1e-9);
  const values = [
    ...samples.flatMap((s) =>
      s.totalMs.map((ms) => ({
        configuration: s.configuration,
        ms: beyond ? Math.min(ms, last) : ms,
        kind: "sample",
      })),
    ),
    ...rules,
  ];
  const subtitle = `histogram of end-to-end time (ms), client side; rules at p50, p95 and p99${
    beyond ? `; ${beyond} samples over ${cap.toPrecision(3)} ms are counted in the last bin` : ""
  }`;
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    config: CONFIG,
    title: {
      text: "T_Total per sample",
      subtitle,
    },
    data: { values },
    facet: {
      row: {
        field: "configuration",
        type: "nominal",
        title: null,
        sort: samples.map((s) => s.configuration),
        header: { labelAngle: 0, labelAlign: "left", labelFontSize: 12 },
      },
    },
    resolve: { scale: { y: "independent" } },
    spec: {
      width: 520,
      height: 110,
      layer: [
        {
          transform: [{ filter: "datum.kind === 'sample'" }],
          mark: { type: "bar", color: "#4c78a8", binSpacing: 0 },
          encoding: {
            x: {
              field: "ms",
              type: "quantitative",
              bin: beyond ? { maxbins: 60, extent: [0, cap] } : { maxbins: 60 },
              title: "T_Total (ms)",
            },
            y: { aggregate: "count", type: "quantitative", title: "samples" },
          },
        },
        {
          transform: [{ filter: "datum.kind === 'stat'" }],
          mark: { type: "rule", strokeWidth: 1.5 },
          encoding: {
            x: { field: "ms", type: "quantitative" },
            color: {
              field: "stat",
              type: "nominal",
              title: "percentile",
              scale: { domain: ["p50", "p95", "p99"], range: ["#222222", "#e45756", "#b279a2"] },
            },
          },
        },
      ],
    },
  };
}

/** p50/p95/p99 rows for the histogram, by the same nearest-rank rule as the table's figures. */
function statRules(s: LatencySamples) {
  const sorted = [...s.totalMs].sort((a, b) => a - b);
  if (sorted.length === 0) return [];
  return ([50, 95, 99] as const).map((p) => ({
    configuration: s.configuration,
    ms: percentile(sorted, p),
    stat: `p${p}`,
    kind: "stat",
  }));
}

/**
 * The ramp: p99 T_Total (against the SLO) and achieved throughput (against the offered load)
 * as the offered load rises, with the measured and the predicted saturation points as rules.
 */
export function capacitySpec(run: CapacityRun): TopLevelSpec {
  const points = run.points.map((p) => ({ ...p }));
  const marks = [
    ...(run.measuredSaturationPerS === null
      ? []
      : [{ load: run.measuredSaturationPerS, which: "measured saturation" }]),
    ...(run.predictedSaturationPerS === null
      ? []
      : [{ load: run.predictedSaturationPerS, which: "predicted saturation" }]),
  ];
  const loads = [...run.points.map((p) => p.offeredPerS), ...marks.map((m) => m.load)];
  const maxLoad = Math.max(1, ...loads);
  const x = {
    field: "offeredPerS",
    type: "quantitative" as const,
    title: "offered load (samples/s)",
    scale: { domain: [0, maxLoad * 1.05] },
  };
  const saturation = {
    data: { values: marks },
    mark: { type: "rule" as const, strokeWidth: 2, strokeDash: [6, 3] },
    encoding: {
      x: { field: "load", type: "quantitative" as const },
      color: {
        field: "which",
        type: "nominal" as const,
        title: null,
        scale: {
          domain: ["measured saturation", "predicted saturation", "SLO"],
          range: ["#e45756", "#9467bd", "#888888"],
        },
      },
    },
  };
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    config: CONFIG,
    title: {
      text: "Capacity",
      subtitle: `ramp of offered load until p99 T_Total passes the SLO (${run.sloMs} ms)`,
    },
    hconcat: [
      {
        width: 340,
        height: 240,
        layer: [
          {
            data: { values: points },
            mark: { type: "line", point: { color: "#4c78a8" }, color: "#4c78a8" },
            encoding: {
              x,
              y: { field: "p99TotalMs", type: "quantitative", title: "p99 T_Total (ms)" },
            },
          },
          {
            data: { values: [{ slo: run.sloMs, which: "SLO" }] },
            mark: { type: "rule", strokeDash: [2, 2] },
            encoding: {
              y: { field: "slo", type: "quantitative" },
              color: { field: "which", type: "nominal" },
            },
          },
          saturation,
        ],
      },
      {
        width: 340,
        height: 240,
        layer: [
          {
            data: {
              values: [
                { offeredPerS: 0, ideal: 0 },
                { offeredPerS: maxLoad, ideal: maxLoad },
              ],
            },
            mark: { type: "line", color: "#bbbbbb", strokeDash: [2, 2] },
            encoding: { x, y: { field: "ideal", type: "quantitative" } },
          },
          {
            data: { values: points },
            mark: { type: "line", point: { color: "#54a24b" }, color: "#54a24b" },
            encoding: {
              x,
              y: {
                field: "achievedPerS",
                type: "quantitative",
                title: "achieved throughput (samples/s)",
              },
            },
          },
          saturation,
        ],
      },
    ],
  };
}

/**
 * One panel of the sweep: one or two series of the long data against threshold, the first solid
 * and the second dashed, with a thin rule at each exit's current threshold.
 */
function sweepPanel(
  title: string,
  yTitle: string,
  series: readonly string[],
  current: readonly { exit: string; threshold: number }[],
) {
  const threshold = {
    field: "threshold",
    type: "quantitative" as const,
    title: "threshold",
    scale: { domain: [0, 1] },
  };
  const colour = { field: "exit", type: "nominal" as const, title: "exit" };
  return {
    width: 250,
    height: 200,
    title: { text: title, fontSize: 12 },
    layer: [
      {
        transform: [{ filter: { field: "series", oneOf: [...series] } }],
        mark: { type: "line" as const, strokeWidth: 2 },
        encoding: {
          x: threshold,
          y: {
            field: "value",
            type: "quantitative" as const,
            title: yTitle,
            scale: { zero: false },
          },
          color: colour,
          strokeDash: {
            field: "series",
            type: "nominal" as const,
            title: null,
            scale: {
              domain: [...series],
              range: [
                [1, 0],
                [6, 3],
              ],
            },
            legend: {
              symbolType: "stroke",
              symbolSize: 400,
              orient: "bottom" as const,
              direction: "vertical" as const,
            },
          },
        },
      },
      {
        data: { values: current.map((c) => ({ ...c })) },
        mark: { type: "rule" as const, strokeWidth: 1, opacity: 0.6 },
        encoding: { x: threshold, color: colour },
      },
    ],
  };
}

/**
 * The threshold sweep, per exit: Overall accuracy and exit rate, mean and p95 T_Total, and bytes
 * sent upstream per sample, each against the exit's threshold; thin rules at the current thresholds.
 */
export function sweepSpec(sweep: readonly ExitSweep[]): TopLevelSpec {
  const values = sweep.flatMap((s) =>
    s.points.flatMap((p) =>
      (
        [
          ["Overall accuracy", pct(p.overallAccuracy)],
          ["exit rate", pct(p.exitRate)],
          ["mean T_Total", p.meanTotalMs],
          ["p95 T_Total", p.p95TotalMs],
          ["bytes per sample", p.bytesPerSample],
        ] as const
      ).map(([series, value]) => ({ exit: s.exit, threshold: p.threshold, series, value })),
    ),
  );
  const current = sweep.flatMap((s) =>
    s.currentThreshold === undefined ? [] : [{ exit: s.exit, threshold: s.currentThreshold }],
  );
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    config: CONFIG,
    title: {
      text: "Threshold sweep",
      subtitle:
        "per exit, from one pass: per-sample logits and measured per-stage times; rules: current thresholds",
    },
    data: { values },
    hconcat: [
      sweepPanel(
        "accuracy and exit rate",
        "% of samples",
        ["Overall accuracy", "exit rate"],
        current,
      ),
      sweepPanel("T_Total", "ms", ["mean T_Total", "p95 T_Total"], current),
      sweepPanel("bytes upstream", "bytes per sample", ["bytes per sample"], current),
    ],
    resolve: { scale: { strokeDash: "independent" }, legend: { strokeDash: "independent" } },
  };
}
