/**
 * The HTML profile report: structure and escaping from a realistic input, "not measured" notes
 * for what a run skipped, and the file opened in real headless Chromium (Debian's `chromium`),
 * with every chart's SVG and marks in its DOM and a screenshot that shows them.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { PNG } from "pngjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { summarize } from "../core/stats.js";
import { requireProgram } from "../test/support/programs.js";
import { TIER_COLOURS } from "./charts.js";
import {
  type CapacityRun,
  type ExitSweep,
  escapeHtml,
  type ProfileHtmlInput,
  renderProfileHtml,
  type TableIIRow,
} from "./html.js";

const run = promisify(execFile);

/** A small deterministic generator (mulberry32), so the example is the same on every run. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A sweep of one exit shaped like a real one: more exits, less accuracy, less time and traffic. */
function exitSweep(
  exit: string,
  current: number,
  advised: number,
  base: number,
  steep = 2.2,
): ExitSweep {
  return {
    exit,
    currentThreshold: current,
    advisedThreshold: advised,
    points: Array.from({ length: 21 }, (_, i) => {
      const t = i / 20;
      const exitRate = 1 - (1 - t) ** steep;
      return {
        threshold: t,
        exitRate,
        overallAccuracy: base - 0.07 * exitRate ** 3,
        exitAccuracy: exitRate === 0 ? null : 0.99 - 0.14 * exitRate ** 2,
        meanTotalMs: 0.08 + (1 - exitRate) * 0.55,
        p95TotalMs: exitRate > 0.95 ? 0.1 : 1.1 - 0.2 * exitRate,
        bytesPerSample: (1 - exitRate) * 3170,
      };
    }),
  };
}

const MODEL = `fog/fashion-deep <img src=x onerror="alert(1)"> & co`;

/**
 * A report as `ddnn profile` would fill it for fashion-deep (device -> server, exit 0.4) on one
 * machine: 2000 samples, 71% leaving at the device, a ramp to saturation, a sweep and an advice.
 */
function exampleInput(): ProfileHtmlInput {
  const rnd = random(7);
  const n = 2000;
  const exp = (mean: number) => -Math.log(1 - rnd()) * mean;
  const ds = Array.from({ length: n }, (_, i) => {
    const device = 0.06 + exp(0.01);
    const offloaded = rnd() > 0.71;
    const server = offloaded ? 0.04 + exp(0.02) : 0;
    // Three answers stuck 40 ms behind a pause (a collection, a reconnect): the tail a real run has.
    const comm = (offloaded ? 0.35 + exp(0.15) : 0) + (i % 700 === 499 ? 40 : 0);
    return { device, server, comm, total: device + server + comm + 0.02 };
  });
  const so = Array.from({ length: n }, () => {
    const server = 0.1 + exp(0.03);
    const comm = 0.45 + exp(0.2);
    return { server, comm, total: server + comm };
  });
  const capacity: CapacityRun = {
    sloMs: 50,
    points: [100, 200, 400, 800, 1600, 2400, 3200, 4000].map((offered) => {
      const achieved = Math.min(offered, 2900);
      return {
        offeredPerS: offered,
        achievedPerS: achieved,
        p99TotalMs: offered < 2600 ? 1.2 + offered / 600 : 20 + (offered - 2600) / 15,
      };
    }),
    measuredSaturationPerS: 3000,
    predictedSaturationPerS: 3450,
    facts: [
      { label: "server CPU per offload", value: "0.29 ms" },
      { label: "offload ratio", value: "29.0%" },
      { label: "devices per server replica at 10 frames/s", value: "345 predicted, 300 measured" },
    ],
  };
  const t = (xs: readonly number[]) => summarize(xs);
  return {
    model: MODEL,
    generatedAt: "2026-12-02T00:30:00Z",
    command: "ddnn profile models/fashion-deep --samples 2000 --devices 4 --fps 50 --slo-ms 50",
    settings: [
      { label: "samples", value: "2000 (fashion-mnist/test)" },
      { label: "devices", value: "4 at 50 frames/s" },
      { label: "device slowdown", value: "1 (none)" },
      { label: "link", value: "loopback, not emulated" },
      { label: "features", value: "f16 + none" },
    ],
    notes: ["tc netem is not available here: the link was not emulated"],
    tableII: [
      {
        configuration: "Device&Server",
        transport: "MQTT",
        samples: n,
        accuracy: { local: 0.8841, server: 0.8133, overall: 0.9012, ideal: 0.9387 },
        timingsMs: {
          device: t(ds.map((d) => d.device)),
          server: t(ds.map((d) => d.server)),
          comm: t(ds.map((d) => d.comm)),
          total: t(ds.map((d) => d.total)),
        },
        bytesPerOffload: 3170,
        bytesPerSample: 919.3,
        exitRates: [
          { stage: "device", rate: 0.71 },
          { stage: "server", rate: 0.29 },
        ],
      },
      {
        configuration: "Server Only",
        transport: "MQTT",
        samples: n,
        accuracy: { local: null, server: 0.9105, overall: 0.9105, ideal: null },
        timingsMs: {
          device: null,
          server: t(so.map((s) => s.server)),
          comm: t(so.map((s) => s.comm)),
          total: t(so.map((s) => s.total)),
        },
        bytesPerOffload: 912,
        bytesPerSample: 912,
      },
      {
        configuration: "Server Only, HTTP",
        transport: "HTTP (Open Inference Protocol)",
        samples: 500,
        accuracy: { local: null, server: 0.9105, overall: 0.9105, ideal: null },
        timingsMs: {
          device: null,
          server: t(so.slice(0, 500).map((s) => s.server)),
          comm: t(so.slice(0, 500).map((s) => s.comm * 2)),
          total: t(so.slice(0, 500).map((s) => s.server + s.comm * 2)),
        },
        bytesPerOffload: 3400,
        bytesPerSample: 3400,
        note: "JSON tensors over HTTP/1.1 keep-alive",
      },
    ],
    latencySamples: [
      { configuration: "Device&Server", totalMs: ds.map((d) => d.total) },
      { configuration: "Server Only", totalMs: so.map((s) => s.total) },
    ],
    sweep: [exitSweep("device", 0.4, 0.55, 0.911)],
    capacity,
    advice: {
      summary: [
        "With p95 T_Total within 50 ms and 1 MB/s upstream, device threshold 0.55 keeps Overall accuracy at 90.1% (-0.0 points) and sends 21% fewer bytes.",
        "Moving the server stage onto the device would not help: T_Device would rise from 0.07 ms to 0.11 ms and nothing is sent either way for 71% of samples.",
      ],
      facts: [
        { label: "p95 T_Total", value: "0.94 ms (SLO 50 ms)" },
        { label: "upstream", value: "36.8 kB/s at 4 devices x 50 frames/s" },
      ],
      patchYaml:
        "spec:\n  exits:\n    device: 0.55\n  placement:\n    device: device\n    server: server\n",
    },
  };
}

const CHARTS = ["tier-latency", "latency-histogram", "exit-accuracy", "sweep", "capacity"];

/** Each chart's figure element's inner HTML, by its data-chart name. */
function figures(html: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of html.matchAll(
    /<figure class="chart" data-chart="([\w-]+)">([\s\S]*?)<\/figure>/g,
  ))
    out.set(m[1]!, m[2]!);
  return out;
}

/** The data marks Vega drew in one SVG (not axes, legends or titles), by mark type, with a shape inside. */
function dataMarks(svg: string): Set<string> {
  const kinds = new Set<string>();
  for (const m of svg.matchAll(/<g class="mark-(\w+) role-mark[^"]*"[^>]*>\s*<(path|line)\b/g))
    kinds.add(m[1]!);
  return kinds;
}

/**
 * What Chromium's NetLog says went out: URL requests that got an answer, and TCP connections
 * attempted. (The browser's own update and sign-in requests still start, and fail at the resolver
 * rules; the one socket it opens is the host resolver's UDP connect() that probes IPv6 routing,
 * which sends no packet.)
 */
function networkUse(netLogPath: string): { answered: string[]; tcp: string[] } {
  interface NetLog {
    constants: { logEventTypes: Record<string, number>; logSourceType: Record<string, number> };
    events: {
      type: number;
      phase?: number;
      source: { id: number; type: number };
      params?: { url?: string; net_error?: number; address?: string };
    }[];
  }
  const log = JSON.parse(readFileSync(netLogPath, "utf8")) as NetLog;
  const event = log.constants.logEventTypes;
  const source = log.constants.logSourceType;
  const urls = new Map<number, string>();
  const failed = new Set<number>();
  const tcp: string[] = [];
  for (const e of log.events) {
    if (e.type === event.REQUEST_ALIVE && e.params?.url) urls.set(e.source.id, e.params.url);
    if (e.type === event.REQUEST_ALIVE && e.params?.net_error !== undefined)
      failed.add(e.source.id);
    const connect = e.type === event.TCP_CONNECT_ATTEMPT || e.type === event.SOCKET_CONNECT;
    if (connect && e.source.type === source.SOCKET) tcp.push(e.params?.address ?? "?");
  }
  const answered = [...urls]
    .filter(([id, url]) => !url.startsWith("file:") && !failed.has(id))
    .map(([, url]) => url);
  return { answered, tcp };
}

describe("the HTML profile report", () => {
  let html = "";
  beforeAll(async () => {
    html = await renderProfileHtml(exampleInput());
  });

  it("holds Table II, every chart as inline SVG, the advice and its patch", () => {
    expect(html.startsWith("<!DOCTYPE html>")).toBe(true);
    for (const id of ["table-ii", "tiers", "histogram", "exit-accuracy", "sweep", "capacity"])
      expect(html).toContain(`<section id="${id}">`);
    const figs = figures(html);
    expect([...figs.keys()].sort()).toEqual([...CHARTS].sort());
    for (const [name, inner] of figs) {
      expect(inner, name).toMatch(/^<svg [^>]*class="marks"/);
      expect(dataMarks(inner).size, name).toBeGreaterThan(0);
    }
    // Table II: three rows, 4 accuracies + 4 mean times + 2 byte counts + samples each; then the
    // percentiles: 4 times x mean/p50/p95/p99.
    const table = html.match(/<table class="table-ii">[\s\S]*?<\/table>/)![0];
    const rowCells = (t: string) =>
      [...t.matchAll(/<tr><th class="label" scope="row">[\s\S]*?<\/tr>/g)].map(
        (r) => r[0].match(/<td>/g)?.length,
      );
    expect(rowCells(table)).toEqual([11, 11, 11]);
    const times = html.match(/<table class="times">[\s\S]*?<\/table>/)![0];
    expect(rowCells(times)).toEqual([16, 16, 16]);
    expect(times).toMatch(
      /Server Only<span class="sub">MQTT<\/span><\/th>(<td>-<\/td>){4}<td>0\.\d{3}<\/td>/,
    );
    expect(table).toContain("<td>88.41%</td><td>81.33%</td><td>90.12%</td><td>93.87%</td>");
    expect(table).toContain("HTTP (Open Inference Protocol)");
    expect(html).toContain('<tr class="current"><td>0.400 <span class="tag">current</span>');
    expect(html).toContain('<tr class="advised"><td>0.550 <span class="tag">advised</span>');
    expect(html).toContain("predicted / measured = 1.15 (within 30%)");
    // The pauses' three samples stay in the histogram, in its last bin, and it says so.
    expect(figs.get("latency-histogram")).toMatch(
      /3 samples over 2\.\d\d ms are counted in the last bin/,
    );
    expect(html).toContain(
      '<pre class="patch"><code>spec:\n  exits:\n    device: 0.55\n  placement:',
    );
  });

  it("is self-contained: no script, nothing loaded from anywhere", () => {
    expect(html).not.toMatch(/<script|<link|<img|<iframe|@import|url\(/i);
    // Attributes that would fetch something; the SVGs' xmlns are names, not requests.
    expect(html).not.toMatch(/\s(?:src|href)="(?!#)/);
    expect(html).toContain("default-src 'none'");
  });

  it("escapes every text it is given", () => {
    expect(html).not.toContain("<img src=x");
    expect(html).toContain(`<h1>ddnn profile: ${escapeHtml(MODEL)}</h1>`);
    expect(html).toContain(
      "fog/fashion-deep &lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; co",
    );
    expect(escapeHtml(`<a href='x'>&`)).toBe("&lt;a href=&#39;x&#39;&gt;&amp;");
  });

  it("says 'not measured' for each section a run skipped, and draws no chart for it", async () => {
    const full = exampleInput();
    const partial = await renderProfileHtml({
      ...full,
      latencySamples: [],
      sweep: null,
      capacity: { notMeasured: "no --slo-ms given, so no ramp test" },
      advice: undefined,
    });
    expect([...figures(partial).keys()]).toEqual(["tier-latency"]);
    const notes = [...partial.matchAll(/<p class="not-measured">([^<]*)<\/p>/g)].map((m) => m[1]);
    expect(notes).toEqual([
      "not measured: no data",
      "not measured in this run",
      "not measured in this run",
      "not measured: no --slo-ms given, so no ramp test",
      "not measured in this run",
    ]);
    // Rows without a finite per-tier mean: no empty bar chart.
    const untimed = await renderProfileHtml({
      model: "m",
      tableII: [
        {
          ...(full.tableII as readonly TableIIRow[])[0]!,
          timingsMs: { device: null, server: null, comm: null, total: null },
        },
      ],
    });
    expect(figures(untimed).has("tier-latency")).toBe(false);
    expect(untimed).toContain('<p class="not-measured">not measured: no per-tier times</p>');
    const bare = await renderProfileHtml({ model: "m" });
    expect(figures(bare).size).toBe(0);
    expect(bare.match(/class="not-measured"/g)).toHaveLength(7);
  });

  it("draws every exit of a three-tier model in the sweep's charts", async () => {
    const threeTier = await renderProfileHtml({
      model: "fog/fashion-3tier",
      sweep: [exitSweep("device", 0.4, 0.5, 0.915), exitSweep("edge", 0.3, 0.35, 0.921, 1.4)],
    });
    const figs = figures(threeTier);
    const lines = (name: string) =>
      figs.get(name)!.match(/aria-roledescription="line mark"/g)?.length;
    // Two exits: five series each in the sweep, Overall and at-exit accuracy in the other.
    expect(lines("sweep")).toBe(10);
    expect(lines("exit-accuracy")).toBe(4);
    expect(threeTier).toContain("exit edge: 21 thresholds, current 0.300, advised 0.350");
  });

  describe("in headless Chromium", () => {
    let dir = "";
    let chromium = "";
    beforeAll(() => {
      chromium = requireProgram("chromium");
      dir = mkdtempSync(join(tmpdir(), "ddnn-report-"));
      writeFileSync(join(dir, "report.html"), html);
    });
    afterAll(() => {
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    /** Chromium on the report with a fresh profile and no way onto the network. */
    async function browse(args: readonly string[], profile: string): Promise<string> {
      const home = join(dir, profile);
      const { stdout } = await run(
        chromium,
        [
          "--headless",
          "--no-sandbox",
          "--disable-gpu",
          "--disable-dev-shm-usage",
          `--user-data-dir=${home}`,
          "--no-first-run",
          "--no-default-browser-check",
          "--disable-background-networking",
          "--disable-component-update",
          "--disable-default-apps",
          "--disable-extensions",
          "--disable-sync",
          "--disable-breakpad",
          "--disable-domain-reliability",
          "--disable-client-side-phishing-detection",
          "--no-pings",
          "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,NetworkTimeServiceQuerying",
          // Any name the page or the browser looks up fails, and any connection goes to a closed
          // local port: nothing leaves the machine, even for an address without a name.
          "--host-resolver-rules=MAP * ~NOTFOUND",
          "--proxy-server=127.0.0.1:9",
          "--proxy-bypass-list=<-loopback>",
          "--hide-scrollbars",
          ...args,
          pathToFileURL(join(dir, "report.html")).href,
        ],
        {
          timeout: 30_000,
          maxBuffer: 64 << 20,
          env: { ...process.env, HOME: home, XDG_CONFIG_HOME: home, XDG_CACHE_HOME: home },
        },
      );
      return stdout;
    }

    it("lays out every chart with its marks, and sends nothing anywhere", async () => {
      const netLog = join(dir, "net.json");
      const dom = await browse(["--dump-dom", `--log-net-log=${netLog}`], "dom");
      expect(networkUse(netLog)).toEqual({ answered: [], tcp: [] });
      expect(dom).toContain('<section id="table-ii">');
      const figs = figures(dom);
      expect([...figs.keys()].sort()).toEqual([...CHARTS].sort());
      const expected: Record<string, string[]> = {
        "tier-latency": ["rect"],
        "latency-histogram": ["rect", "rule"],
        "exit-accuracy": ["line", "symbol"],
        sweep: ["line"],
        capacity: ["line", "symbol", "rule"],
      };
      for (const [name, kinds] of Object.entries(expected))
        expect([...dataMarks(figs.get(name)!)].sort(), name).toEqual(expect.arrayContaining(kinds));
    });

    it("paints the charts: a screenshot that is not blank and holds the tiers' colours", async () => {
      const png = join(dir, "report.png");
      await browse([`--screenshot=${png}`, "--window-size=1280,4200"], "shot");
      const image = PNG.sync.read(readFileSync(png));
      expect(image.width).toBe(1280);
      const colours = new Set<number>();
      let inked = 0;
      const counts = new Map<string, number>();
      const targets = Object.entries(TIER_COLOURS).map(([tier, hex]) => ({
        tier,
        rgb: [1, 3, 5].map((i) => Number.parseInt(hex.slice(i, i + 2), 16)),
      }));
      const d = image.data;
      for (let i = 0; i < d.length; i += 4) {
        const [r, g, b] = [d[i]!, d[i + 1]!, d[i + 2]!];
        colours.add((r << 16) | (g << 8) | b);
        if (r < 240 || g < 240 || b < 240) inked++;
        for (const t of targets)
          if (
            Math.abs(r - t.rgb[0]!) < 6 &&
            Math.abs(g - t.rgb[1]!) < 6 &&
            Math.abs(b - t.rgb[2]!) < 6
          )
            counts.set(t.tier, (counts.get(t.tier) ?? 0) + 1);
      }
      const pixels = image.width * image.height;
      expect(colours.size).toBeGreaterThan(200);
      expect(inked / pixels).toBeGreaterThan(0.03);
      // The stacked bars' three tier colours are painted in solid areas, not just a legend swatch.
      for (const t of targets) expect(counts.get(t.tier) ?? 0, t.tier).toBeGreaterThan(2000);
    });
  });
});
