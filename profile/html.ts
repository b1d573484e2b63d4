/**
 * The profile report as one self-contained HTML file: Table II, the charts (Vega-Lite drawn to
 * SVG in Node, inlined), the sweep and capacity tables and the advice with its DDNNModel patch.
 * No script, no external stylesheet, font or image: it opens the same from a laptop's disk, a CI
 * artifact or an air-gapped fog. A section that was not measured says so instead of drawing an
 * empty chart. docs/profile-report.md describes the sections and these input types.
 */
import { version as vegaVersion } from "vega";
import { type TopLevelSpec, version as vegaLiteVersion } from "vega-lite";
import type { Summary } from "../core/stats.js";
import {
  capacitySpec,
  exitAccuracySpec,
  latencyHistogramSpec,
  renderSvg,
  sweepSpec,
  TIER_COLOURS,
  tierLatencySpec,
  viewsAccuracySpec,
} from "./charts.js";

/** mean, p50, p95, p99 of a time in ms (core/stats.ts's `Summary` fits). NaN reads as "-". */
export type LatencyStats = Pick<Summary, "mean" | "p50" | "p95" | "p99">;

/** Accuracies as fractions in [0, 1]; null where a configuration has no such figure. */
export interface TableIIAccuracy {
  /** The first exit's answer for every sample (the device alone). */
  readonly local: number | null;
  /** Accuracy of the samples the last stage answered. */
  readonly server: number | null;
  /** Accuracy of the answers the system gave. */
  readonly overall: number | null;
  /** Fraction of samples some exit classifies correctly (needs every exit's answer: probe mode). */
  readonly ideal: number | null;
}

/** One row of the reference paper's Table II: one configuration as measured on the fog. */
export interface TableIIRow {
  /** "Device&Server", "Server Only", "HTTP (Open Inference Protocol)", ... */
  readonly configuration: string;
  /** How requests travelled, e.g. "MQTT" or "HTTP"; shown under the configuration's name. */
  readonly transport?: string;
  readonly samples: number;
  readonly accuracy: TableIIAccuracy;
  /** Per-sample times in ms; null where the configuration has no such tier (T_Device of Server Only). */
  readonly timingsMs: {
    readonly device: LatencyStats | null;
    readonly server: LatencyStats | null;
    readonly comm: LatencyStats | null;
    readonly total: LatencyStats | null;
  };
  /** Mean bytes of one upstream frame (header included); null when nothing was offloaded. */
  readonly bytesPerOffload: number | null;
  /** Upstream bytes divided by all samples, the confident ones included. */
  readonly bytesPerSample: number | null;
  /** Fraction of samples answered by each stage, in stage order. */
  readonly exitRates?: readonly { readonly stage: string; readonly rate: number }[];
  /** Anything a reader must know about the row (degraded answers, a missing probe). */
  readonly note?: string;
}

/** Every sample's T_Total (ms) of one configuration, for the histogram. */
export interface LatencySamples {
  readonly configuration: string;
  readonly totalMs: readonly number[];
}

/** The whole system's figures with one exit's threshold set to `threshold`. */
export interface SweepPoint {
  readonly threshold: number;
  /** Fraction of all samples that leave at this exit. */
  readonly exitRate: number;
  /** Fraction of all samples answered correctly by the system. */
  readonly overallAccuracy: number;
  /** Accuracy of the samples that left at this exit, when the sweep knows it. */
  readonly exitAccuracy?: number | null;
  readonly meanTotalMs: number;
  readonly p95TotalMs: number;
  /** Upstream bytes per sample (all samples, confident ones count 0). */
  readonly bytesPerSample: number;
}

/** The sweep of one exit's threshold, the other exits held at their current thresholds. */
export interface ExitSweep {
  /** The stage whose exit moves. */
  readonly exit: string;
  /** The threshold the model runs with now; marked on the charts and the table. */
  readonly currentThreshold?: number;
  /** The advice's threshold for this exit, when there is an advice; marked in the table. */
  readonly advisedThreshold?: number;
  /** Thresholds from 0 to 1, in ascending order. */
  readonly points: readonly SweepPoint[];
}

/** One step of the ramp test. */
export interface CapacityPoint {
  readonly offeredPerS: number;
  readonly achievedPerS: number;
  readonly p99TotalMs: number;
}

/** The ramp test and the capacity model's prediction. Loads are samples per second, all devices. */
export interface CapacityRun {
  readonly sloMs: number;
  readonly points: readonly CapacityPoint[];
  /** The offered load at which p99 T_Total passed the SLO; null when the ramp never reached it. */
  readonly measuredSaturationPerS: number | null;
  /** The load the model (server CPU per offload x offload ratio) predicts saturates the server. */
  readonly predictedSaturationPerS: number | null;
  /** The model's inputs and results, e.g. "server CPU per offload": "0.41 ms". */
  readonly facts?: readonly Setting[];
  /** Why prediction and measurement differ, when they do by more than 30%. */
  readonly note?: string;
}

/** The designer's advice: what to change, and the patch that changes it. */
export interface Advice {
  /** Paragraphs of plain text, in reading order. */
  readonly summary: readonly string[];
  /** The figures behind it, e.g. "p95 T_Total": "3.1 ms (SLO 50 ms)". */
  readonly facts?: readonly Setting[];
  /** A DDNNModel patch (spec.exits, spec.placement) as YAML text; null when nothing should change. */
  readonly patchYaml: string | null;
}

/** A labelled value, shown as a row of a definition list. */
export interface Setting {
  readonly label: string;
  readonly value: string;
}

/** One line of the horizontal DDNN's accuracy table (an exit, a device alone, Overall, Ideal). */
export interface ViewsAccuracyRow {
  readonly name: string;
  /** Over every capture, from the distributed run; null where the run has no such figure. */
  readonly distributed: number | null;
  readonly exitRate?: number | null;
  readonly accuracyExited?: number | null;
  /** The in-process multi-view pipeline's figure on the same captures. */
  readonly inProcess: number | null;
}

/** A multi-view bundle's run: its accuracy per exit and the fusion's figures. */
export interface ViewsRun {
  readonly rows: readonly ViewsAccuracyRow[];
  readonly facts?: readonly Setting[];
}

/** A section the run did not measure, and why ("no --slo-ms given: no ramp test"). */
export interface NotMeasured {
  readonly notMeasured: string;
}

/** A section's data; null, undefined or `{ notMeasured }` renders as a "not measured" note. */
export type Section<T> = T | NotMeasured | null | undefined;

/** Everything the HTML report shows. Only `model` is required; each missing section says so. */
export interface ProfileHtmlInput {
  /** The model profiled, e.g. "fog/fashion-deep 1.0.0"; in the title and heading. */
  readonly model: string;
  /** ISO 8601 time of the run. */
  readonly generatedAt?: string;
  /** The command line that produced the report, shown so a reader can run it again. */
  readonly command?: string;
  /** The run's settings: samples, devices, frame rate, device slowdown, link, SLO, encoding... */
  readonly settings?: readonly Setting[];
  /** Notes on the whole run (e.g. "tc netem unavailable: the link was not emulated"). */
  readonly notes?: readonly string[];
  readonly tableII?: Section<readonly TableIIRow[]>;
  /** A multi-view bundle's section; absent (not shown) for one view. */
  readonly views?: Section<ViewsRun>;
  readonly latencySamples?: Section<readonly LatencySamples[]>;
  readonly sweep?: Section<readonly ExitSweep[]>;
  readonly capacity?: Section<CapacityRun>;
  readonly advice?: Section<Advice>;
}

/** Escapes text for HTML element content and double-quoted attribute values. */
export function escapeHtml(text: string): string {
  return text
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&#39;");
}

const esc = escapeHtml;

/** The section's data, or the reason it is missing. */
type Measured<T> = { readonly data: T } | { readonly reason: string };

function measured<T>(section: Section<T>, empty: (t: T) => boolean): Measured<T> {
  if (section === null || section === undefined) return { reason: "not measured in this run" };
  if (typeof section === "object" && "notMeasured" in section)
    return { reason: `not measured: ${section.notMeasured}` };
  const data = section as T;
  return empty(data) ? { reason: "not measured: no data" } : { data };
}

function notMeasured(reason: string): string {
  return `<p class="not-measured">${esc(reason)}</p>`;
}

const isEmpty = (xs: readonly unknown[]) => xs.length === 0;

function percent(x: number | null | undefined): string {
  return x === null || x === undefined || !Number.isFinite(x) ? "-" : `${(x * 100).toFixed(2)}%`;
}

function ms(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return "-";
  return x >= 100 ? x.toFixed(1) : x.toFixed(3);
}

function bytes(x: number | null | undefined): string {
  return x === null || x === undefined || !Number.isFinite(x) ? "-" : Math.round(x).toString();
}

function num(x: number, digits: number): string {
  return Number.isFinite(x) ? x.toFixed(digits) : "-";
}

/** A chart drawn to SVG inside its figure, named by `data-chart` for readers and tests. */
async function figure(name: string, spec: TopLevelSpec, caption: string): Promise<string> {
  return `<figure class="chart" data-chart="${esc(name)}">${await renderSvg(spec)}<figcaption>${esc(caption)}</figcaption></figure>`;
}

function definitionList(items: readonly Setting[] | undefined): string {
  if (!items || items.length === 0) return "";
  return `<dl class="facts">${items.map((s) => `<dt>${esc(s.label)}</dt><dd>${esc(s.value)}</dd>`).join("")}</dl>`;
}

/** One section of the report: its chart and tables when measured, the reason when not. */
interface SectionPlan<T> {
  readonly id: string;
  readonly title: string;
  readonly data: Measured<T>;
  readonly chart?: {
    readonly name: string;
    readonly spec: (data: T) => TopLevelSpec;
    readonly caption: string;
  };
  readonly html?: (data: T) => string;
}

async function renderSection<T>(plan: SectionPlan<T>): Promise<string> {
  const m = plan.data;
  const body =
    "data" in m
      ? (plan.chart
          ? await figure(plan.chart.name, plan.chart.spec(m.data), plan.chart.caption)
          : "") + (plan.html ? plan.html(m.data) : "")
      : notMeasured(m.reason);
  return `<section id="${plan.id}"><h2>${esc(plan.title)}</h2>${body}</section>`;
}

const TIMES = [
  { key: "device", name: "T_Device" },
  { key: "server", name: "T_Server" },
  { key: "comm", name: "T_Comm" },
  { key: "total", name: "T_Total" },
] as const;
const STATS = ["mean", "p50", "p95", "p99"] as const;

function configurationCell(r: TableIIRow): string {
  return `<th class="label" scope="row">${esc(r.configuration)}${r.transport ? `<span class="sub">${esc(r.transport)}</span>` : ""}</th>`;
}

/** The paper's Table II (accuracies, mean times, bytes), then every time's percentiles. */
function tableIIHtml(rows: readonly TableIIRow[]): string {
  const head = [
    `<tr><th rowspan="2" class="label">configuration</th><th colspan="4">accuracy</th><th colspan="4">mean time (ms)</th><th colspan="2">bytes upstream</th><th rowspan="2">samples</th></tr>`,
    `<tr>${["Local", "Server", "Overall", "Ideal", ...TIMES.map((t) => t.name), "per offload", "per sample"].map((h) => `<th>${h}</th>`).join("")}</tr>`,
  ].join("");
  const body = rows
    .map((r) =>
      [
        configurationCell(r),
        ...(["local", "server", "overall", "ideal"] as const).map(
          (a) => `<td>${percent(r.accuracy[a])}</td>`,
        ),
        ...TIMES.map((t) => `<td>${ms(r.timingsMs[t.key]?.mean)}</td>`),
        `<td>${bytes(r.bytesPerOffload)}</td>`,
        `<td>${bytes(r.bytesPerSample)}</td>`,
        `<td>${r.samples}</td>`,
      ].join(""),
    )
    .map((cells) => `<tr>${cells}</tr>`)
    .join("");
  const timesHead = [
    `<tr><th rowspan="2" class="label">configuration</th>${TIMES.map((t) => `<th colspan="4">${t.name} (ms)</th>`).join("")}</tr>`,
    `<tr>${TIMES.flatMap(() => STATS.map((s) => `<th>${s}</th>`)).join("")}</tr>`,
  ].join("");
  const timesBody = rows
    .map(
      (r) =>
        `<tr>${configurationCell(r)}${TIMES.flatMap((t) => STATS.map((s) => `<td>${ms(r.timingsMs[t.key]?.[s])}</td>`)).join("")}</tr>`,
    )
    .join("");
  const exits = rows
    .filter((r) => r.exitRates && r.exitRates.length > 0)
    .map(
      (r) =>
        `<li><b>${esc(r.configuration)}</b>: ${r
          .exitRates!.map((e) => `${esc(e.stage)} ${percent(e.rate)}`)
          .join(", ")}</li>`,
    );
  const notes = rows
    .filter((r) => r.note)
    .map((r) => `<li><b>${esc(r.configuration)}</b>: ${esc(r.note!)}</li>`);
  return [
    `<div class="scroll"><table class="table-ii"><thead>${head}</thead><tbody>${body}</tbody></table></div>`,
    `<h3>Time percentiles</h3><div class="scroll"><table class="times"><thead>${timesHead}</thead><tbody>${timesBody}</tbody></table></div>`,
    `<p class="legend">Local: the first exit's answer for every sample. Server: accuracy of the samples the last stage answered. Overall: the answers the system gave. Ideal: a sample counts when any exit classifies it correctly. T_Device: the device stage; T_Server: compute upstream of the device; T_Comm: the round trip less that compute; T_Total: end to end at the client. "-": the configuration has no such figure.</p>`,
    exits.length ? `<p>Exit rates:</p><ul>${exits.join("")}</ul>` : "",
    notes.length ? `<ul class="notes">${notes.join("")}</ul>` : "",
  ].join("");
}

function viewsHtml(run: ViewsRun): string {
  const rows = run.rows
    .map(
      (r) =>
        `<tr><th class="label" scope="row">${esc(r.name)}</th><td>${percent(r.distributed)}</td><td>${percent(r.exitRate)}</td><td>${percent(r.accuracyExited)}</td><td>${percent(r.inProcess)}</td></tr>`,
    )
    .join("");
  return [
    `<div class="scroll"><table class="views"><thead><tr><th class="label">accuracy</th><th>distributed run</th><th>exit rate</th><th>accuracy (exited)</th><th>in process</th></tr></thead><tbody>${rows}</tbody></table></div>`,
    definitionList(run.facts),
  ].join("");
}

function sweepTableHtml(sweep: readonly ExitSweep[]): string {
  return sweep
    .map((s) => {
      const rows = s.points
        .map((p) => {
          const marks = [
            s.currentThreshold !== undefined && nearlyEqual(p.threshold, s.currentThreshold)
              ? "current"
              : "",
            s.advisedThreshold !== undefined && nearlyEqual(p.threshold, s.advisedThreshold)
              ? "advised"
              : "",
          ].filter(Boolean);
          return `<tr${marks.length ? ` class="${marks.join(" ")}"` : ""}><td>${num(p.threshold, 3)}${marks.length ? ` <span class="tag">${marks.join(", ")}</span>` : ""}</td><td>${percent(p.exitRate)}</td><td>${percent(p.overallAccuracy)}</td><td>${percent(p.exitAccuracy)}</td><td>${ms(p.meanTotalMs)}</td><td>${ms(p.p95TotalMs)}</td><td>${bytes(p.bytesPerSample)}</td></tr>`;
        })
        .join("");
      return `<details><summary>exit ${esc(s.exit)}: ${s.points.length} thresholds${s.currentThreshold === undefined ? "" : `, current ${num(s.currentThreshold, 3)}`}${s.advisedThreshold === undefined ? "" : `, advised ${num(s.advisedThreshold, 3)}`}</summary><div class="scroll"><table class="sweep"><thead><tr><th>threshold</th><th>exit rate</th><th>Overall</th><th>at this exit</th><th>mean T_Total ms</th><th>p95 T_Total ms</th><th>bytes/sample</th></tr></thead><tbody>${rows}</tbody></table></div></details>`;
    })
    .join("");
}

function nearlyEqual(a: number, b: number): boolean {
  return Math.abs(a - b) < 1e-9;
}

function capacityTableHtml(run: CapacityRun): string {
  const m = run.measuredSaturationPerS;
  const p = run.predictedSaturationPerS;
  const agreement =
    m !== null && p !== null && m > 0
      ? `predicted / measured = ${num(p / m, 2)} (${Math.abs(p / m - 1) <= 0.3 ? "within" : "outside"} 30%)`
      : "no comparison: one of the two is missing";
  const summary: Setting[] = [
    { label: "SLO", value: `p99 T_Total ≤ ${run.sloMs} ms` },
    {
      label: "measured saturation",
      value: m === null ? "not reached by the ramp" : `${num(m, 1)} samples/s`,
    },
    {
      label: "predicted saturation",
      value: p === null ? "no prediction" : `${num(p, 1)} samples/s`,
    },
    { label: "agreement", value: agreement },
    ...(run.facts ?? []),
  ];
  const rows = run.points
    .map(
      (pt) =>
        `<tr${pt.p99TotalMs > run.sloMs ? ' class="over"' : ""}><td>${num(pt.offeredPerS, 1)}</td><td>${num(pt.achievedPerS, 1)}</td><td>${ms(pt.p99TotalMs)}</td></tr>`,
    )
    .join("");
  return [
    definitionList(summary),
    run.note ? `<p class="note">${esc(run.note)}</p>` : "",
    `<details><summary>ramp: ${run.points.length} steps</summary><table class="ramp"><thead><tr><th>offered /s</th><th>achieved /s</th><th>p99 T_Total ms</th></tr></thead><tbody>${rows}</tbody></table></details>`,
  ].join("");
}

function adviceHtml(advice: Advice): string {
  return [
    advice.summary.map((p) => `<p>${esc(p)}</p>`).join(""),
    definitionList(advice.facts),
    advice.patchYaml === null
      ? `<p class="note">No change advised: the current thresholds and placement are the best found.</p>`
      : `<p>DDNNModel patch (<code>kubectl patch ddnnmodel NAME --type merge --patch-file patch.yaml</code>):</p><pre class="patch"><code>${esc(advice.patchYaml)}</code></pre>`,
  ].join("");
}

const CSS = `
:root { color-scheme: light; --fg: #1d1d1f; --muted: #5f6368; --line: #d9d9de; --bg-alt: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: #fff; max-width: 1280px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h3 { font-size: 14px; margin: 16px 0 4px; }
h2 { font-size: 17px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.meta { color: var(--muted); margin: 0 0 12px; }
nav { margin: 8px 0 16px; font-size: 13px; }
nav a { margin-right: 14px; color: #1a5fb4; text-decoration: none; }
code, pre { font: 12.5px/1.45 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
pre { background: var(--bg-alt); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; overflow-x: auto; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 6px 0; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: right; white-space: nowrap; }
thead th { background: var(--bg-alt); text-align: center; font-weight: 600; }
th.label { text-align: left; }
.sub { display: block; font-weight: normal; color: var(--muted); font-size: 12px; }
tbody tr:nth-child(even) { background: #fbfbfc; }
tr.current td { background: #eef4fb; }
tr.advised td { background: #eef8ee; }
tr.over td { color: #b3261e; }
.tag { font-size: 11px; color: var(--muted); }
.legend, figcaption, .note { color: var(--muted); font-size: 12.5px; max-width: 980px; }
.not-measured { color: #8a6d00; background: #fff8e1; border: 1px solid #f0dc9a; border-radius: 6px; padding: 8px 12px; max-width: 720px; }
figure.chart { margin: 12px 0 20px; }
figure.chart svg { max-width: 100%; height: auto; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 8px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
details { margin: 6px 0; }
summary { cursor: pointer; color: #1a5fb4; }
ul.notes li { color: var(--muted); }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
@media print { body { padding: 0; } figure.chart { break-inside: avoid; } }
`;

/**
 * The whole report as one HTML document. Charts are drawn here (Vega in Node); the result needs
 * nothing else to open. Every string from the input is escaped.
 */
export async function renderProfileHtml(input: ProfileHtmlInput): Promise<string> {
  const table = measured(input.tableII, isEmpty);
  const tiers: Measured<readonly TableIIRow[]> =
    "data" in table &&
    !table.data.some((r) =>
      [r.timingsMs.device, r.timingsMs.comm, r.timingsMs.server].some(
        (t) => t && Number.isFinite(t.mean),
      ),
    )
      ? { reason: "not measured: no per-tier times" }
      : table;
  const samples = measured(input.latencySamples, (xs) => xs.every((s) => s.totalMs.length === 0));
  const sweep = measured(input.sweep, (xs) => xs.every((s) => s.points.length === 0));
  const capacity = measured(input.capacity, (c) => c.points.length === 0);
  const advice = measured(input.advice, () => false);
  const views =
    input.views === undefined ? undefined : measured(input.views, (v) => v.rows.length === 0);

  const sections = await Promise.all([
    renderSection({ id: "table-ii", title: "Table II", data: table, html: tableIIHtml }),
    ...(views
      ? [
          renderSection({
            id: "views",
            title: "Horizontal DDNN: accuracy per exit",
            data: views,
            chart: {
              name: "views-accuracy",
              spec: (v: ViewsRun) => viewsAccuracySpec(v.rows),
              caption:
                "Each device alone (in process: in the fog a device answers alone only when its capture's answer is late), the gateway's local aggregate and the later exits over every capture, Overall and Ideal: the distributed run next to the in-process multi-view pipeline on the same captures.",
            },
            html: viewsHtml,
          }),
        ]
      : []),
    renderSection({
      id: "tiers",
      title: "Time per tier",
      data: tiers,
      chart: {
        name: "tier-latency",
        spec: tierLatencySpec,
        caption: `Mean ms per tier per configuration, stacked: ${Object.keys(TIER_COLOURS).join(", ")}. The bars sum to the mean T_Total where the tiers account for all of it.`,
      },
    }),
    renderSection({
      id: "histogram",
      title: "T_Total distribution",
      data: samples,
      chart: {
        name: "latency-histogram",
        spec: (xs) => latencyHistogramSpec(xs.filter((s) => s.totalMs.length > 0)),
        caption:
          "Every sample's T_Total (client side, ms); a bimodal shape separates samples answered at an early exit from those sent upstream.",
      },
    }),
    renderSection({
      id: "exit-accuracy",
      title: "Accuracy against local exit rate",
      data: sweep,
      chart: {
        name: "exit-accuracy",
        spec: exitAccuracySpec,
        caption:
          "How much accuracy each exit costs: moving an exit's threshold up sends more samples out early (right) at some Overall accuracy.",
      },
    }),
    renderSection({
      id: "sweep",
      title: "Threshold sweep",
      data: sweep,
      chart: {
        name: "sweep",
        spec: sweepSpec,
        caption:
          "Each exit's threshold from 0 to 1 (the other exits held at their current thresholds), computed from one measured pass.",
      },
      html: sweepTableHtml,
    }),
    renderSection({
      id: "capacity",
      title: "Capacity",
      data: capacity,
      chart: {
        name: "capacity",
        spec: capacitySpec,
        caption:
          "Left: p99 T_Total as the offered load rises, against the SLO. Right: the throughput achieved (dotted: all of the offered load). Dashed rules: measured and predicted saturation.",
      },
      html: capacityTableHtml,
    }),
    renderSection({ id: "advice", title: "Advice", data: advice, html: adviceHtml }),
  ]);

  const title = `ddnn profile: ${input.model}`;
  const meta = [input.generatedAt ? `run at ${esc(input.generatedAt)}` : ""]
    .filter(Boolean)
    .join(" · ");
  const nav = [
    ["table-ii", "Table II"],
    ...(views ? [["views", "Views"]] : []),
    ["tiers", "Time per tier"],
    ["histogram", "T_Total"],
    ["exit-accuracy", "Accuracy vs exit rate"],
    ["sweep", "Sweep"],
    ["capacity", "Capacity"],
    ["advice", "Advice"],
  ]
    .map(([id, name]) => `<a href="#${id}">${name}</a>`)
    .join("");
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>${esc(title)}</title>
<style>${CSS}</style>
</head>
<body>
<header>
<h1>${esc(title)}</h1>
${meta ? `<p class="meta">${meta}</p>` : ""}
${input.command ? `<pre class="command"><code>${esc(input.command)}</code></pre>` : ""}
${definitionList(input.settings)}
${input.notes?.length ? `<ul class="notes">${input.notes.map((n) => `<li>${esc(n)}</li>`).join("")}</ul>` : ""}
<nav>${nav}</nav>
</header>
<main>
${sections.join("\n")}
</main>
<footer>Charts: Vega-Lite ${esc(vegaLiteVersion)} rendered to SVG by Vega ${esc(vegaVersion)} when the report was written; the file holds no script and loads nothing.</footer>
</body>
</html>
`;
}
