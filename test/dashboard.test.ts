/**
 * The chart's Grafana dashboard (charts/ddnn-fog/dashboards/ddnn-fog.json) against Grafana's own
 * schema types from @grafana/schema: the JSON is type-checked by the TypeScript compiler as an
 * object literal of type `Dashboard` (so a misspelt or unknown field, or a value of the wrong
 * type, is an error), each panel's options against its panel plugin's `Options` and each query
 * against `DataQuery` with the Prometheus fields. Then what the schema cannot say: a layout
 * without overlaps, unique ids, variables that exist, and the panels an operator needs.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { root } from "./support/run.js";

const FILE = join(root, "charts", "ddnn-fog", "dashboards", "ddnn-fog.json");

interface Target {
  refId: string;
  expr: string;
  legendFormat?: string;
  datasource?: { type: string; uid: string };
}
interface PanelJson {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  options?: Record<string, unknown>;
  targets?: Target[];
  datasource?: { type: string; uid: string };
}
interface DashboardJson {
  panels: PanelJson[];
  templating: { list: { name: string; query: unknown }[] };
}

const SCHEMA = "@grafana/schema/dist/esm/raw/composable";
/** Panel plugins the dashboard may use, and the module of each one's `Options` type. */
const PANEL_OPTIONS: Record<string, string> = {
  timeseries: `${SCHEMA}/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen`,
  stat: `${SCHEMA}/stat/panelcfg/x/StatPanelCfg_types.gen`,
};

/**
 * TypeScript source declaring the dashboard, its panels' options and its queries with Grafana's
 * types. JSON holds an enum's value, not the enum, hence `Json<T>` (string enums as their values).
 */
function checkSource(dashboard: DashboardJson): string {
  const lines = [
    `import type { Dashboard, DataQuery } from "@grafana/schema";`,
    ...Object.entries(PANEL_OPTIONS).map(
      ([type, module]) => `import type { Options as ${type}Options } from "${module}";`,
    ),
    // biome-ignore lint/suspicious/noTemplateCurlyInString: TypeScript source holding a template literal type
    "type Json<T> = T extends string ? `${T}` : T extends readonly (infer U)[] ? Json<U>[] : T extends object ? { [K in keyof T]: Json<T[K]> } : T;",
    "type PrometheusQuery = DataQuery & { expr: string; legendFormat?: string };",
    `export const dashboard: Json<Dashboard> = ${JSON.stringify(dashboard)};`,
  ];
  for (const p of dashboard.panels) {
    if (p.type === "row") continue;
    const options = PANEL_OPTIONS[p.type] ? `${p.type}Options` : "never";
    lines.push(
      `export const options${p.id}: Json<${options}> = ${JSON.stringify(p.options)};`,
      `export const targets${p.id}: Json<PrometheusQuery>[] = ${JSON.stringify(p.targets ?? [])};`,
    );
  }
  return lines.join("\n");
}

/** The compiler's errors for `source`, compiled as a module of this package (so @grafana/schema resolves). */
function typeErrors(source: string): string[] {
  const file = join(root, "test", "dashboard-schema-check.ts");
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    lib: ["lib.es2023.d.ts"],
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (name, language, ...rest) =>
    name === file
      ? ts.createSourceFile(name, source, language)
      : getSourceFile.call(host, name, language, ...rest);
  host.fileExists = (name) => name === file || fileExists.call(host, name);
  host.readFile = (name) => (name === file ? source : readFile.call(host, name));
  const program = ts.createProgram([file], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const text = ts.flattenDiagnosticMessageText(d.messageText, "\n");
    if (!d.file || d.start === undefined) return text;
    const { line } = d.file.getLineAndCharacterOfPosition(d.start);
    return `line ${line + 1}: ${text}`;
  });
}

const read = () => JSON.parse(readFileSync(FILE, "utf8")) as DashboardJson;

describe("the Grafana dashboard", () => {
  it("is a Dashboard of @grafana/schema, with panel options and queries of Grafana's types", () => {
    const errors = typeErrors(checkSource(read()));
    expect(errors).toEqual([]);
  });

  it("fails that check when a field is misspelt, mistyped or not Grafana's", () => {
    const broken = (change: (d: DashboardJson) => void) => {
      const d = read();
      change(d);
      return typeErrors(checkSource(d)).join("\n");
    };
    const panel = (d: DashboardJson, type: string) => d.panels.find((p) => p.type === type)!;
    expect(
      broken((d) => {
        const p = panel(d, "timeseries") as unknown as Record<string, unknown>;
        p.gridpos = p.gridPos;
        delete p.gridPos;
      }),
    ).toMatch(/gridpos/);
    expect(
      broken((d) => {
        (panel(d, "timeseries").gridPos as unknown as Record<string, unknown>).w = "8";
      }),
    ).toMatch(/string.*not assignable to type 'number'/);
    expect(
      broken((d) => {
        panel(d, "stat").options!.colorMode = "purple";
      }),
    ).toMatch(/"purple"/);
    expect(
      broken((d) => {
        delete (panel(d, "timeseries").options as Record<string, unknown>).legend;
      }),
    ).toMatch(/legend/);
    expect(
      broken((d) => {
        panel(d, "timeseries").targets![0]!.expr = 1 as unknown as string;
      }),
    ).toMatch(/number.*not assignable to type 'string'/);
  });

  it("lays its panels out on Grafana's 24-column grid without overlaps, with unique ids and refIds", () => {
    const { panels } = read();
    expect(new Set(panels.map((p) => p.id)).size).toBe(panels.length);
    const cells = new Map<string, string>();
    for (const p of panels) {
      const { x, y, w, h } = p.gridPos;
      expect(x + w, p.title).toBeLessThanOrEqual(24);
      for (let i = x; i < x + w; i++)
        for (let j = y; j < y + h; j++) {
          expect(cells.get(`${i},${j}`), `${p.title} overlaps`).toBeUndefined();
          cells.set(`${i},${j}`, p.title);
        }
      const refIds = (p.targets ?? []).map((t) => t.refId);
      expect(new Set(refIds).size, p.title).toBe(refIds.length);
    }
  });

  it("queries the data source and variables it defines, in every panel", () => {
    const d = read();
    const variables = new Set(d.templating.list.map((v) => v.name));
    expect([...variables].sort()).toEqual(["datasource", "model", "namespace"]);
    const grafana = new Set(["__rate_interval", "__interval", "__range"]);
    // Grafana's reference to the data source variable, not a JavaScript template.
    const datasource = `$${"{datasource}"}`;
    for (const p of d.panels.filter((q) => q.type !== "row")) {
      expect(p.datasource?.uid, p.title).toBe(datasource);
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      for (const t of p.targets ?? []) {
        expect(t.datasource?.uid, p.title).toBe(datasource);
        for (const [, name] of t.expr.matchAll(/\$(\w+)/g))
          expect(variables.has(name!) || grafana.has(name!), `${p.title}: $${name}`).toBe(true);
      }
    }
  });

  it("shows exit rate per stage, offload ratio, latency per tier p50/p99, throughput, degraded and error answers, batch sizes, queue depth and devices up", () => {
    const exprs = read()
      .panels.flatMap((p) => (p.targets ?? []).map((t) => `${p.title}: ${t.expr}`))
      .join("\n");
    const needed: [string, RegExp][] = [
      [
        "exit rate per stage",
        /sum by \(model, stage\) \(rate\(ddnn_exits_total.*\/.*ddnn_exits_total/,
      ],
      [
        "offload ratio",
        /sum by \(model\) \(rate\(ddnn_offloads_total.*\/ sum by \(model\) \(rate\(ddnn_exits_total/,
      ],
      [
        "p50 per tier",
        /histogram_quantile\(0\.5, sum by \(le, tier\) \(rate\(ddnn_request_seconds_bucket/,
      ],
      [
        "p99 per tier",
        /histogram_quantile\(0\.99, sum by \(le, tier\) \(rate\(ddnn_request_seconds_bucket/,
      ],
      ["throughput", /^Throughput: sum by \(model\) \(rate\(ddnn_exits_total/m],
      ["degraded", /rate\(ddnn_degraded_total/],
      ["errors by code", /sum by \(tier, code\) \(rate\(ddnn_errors_total/],
      ["batch sizes", /ddnn_batch_size_bucket/],
      ["queue depth", /ddnn_queue_depth/],
      [
        "devices up",
        /^Devices up: count by \(model\) \(ddnn_broker_connected\{[^}]*tier="device"/m,
      ],
      [
        "worker utilisation",
        /rate\(ddnn_worker_busy_seconds_total.*\/ \(sum by \(tier, pod\) \(ddnn_workers/,
      ],
    ];
    expect(needed.filter(([, re]) => !re.test(exprs)).map(([what]) => what)).toEqual([]);
  });
});
