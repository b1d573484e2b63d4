/**
 * `ddnn profile` on the shipped multi-view bundle runs the horizontal DDNN distributed (three
 * device agents, the fusion gateway, the server, the embedded broker) and its Table II equals what
 * `ddnn eval` computes in process on the same captures: the local aggregate's and the server's
 * exits, Overall, and Ideal from the probe pass. `ddnn up --views` reports the same Ideal.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { ProfileReport } from "../profile/schema.js";
import { ddnn, root } from "./support/run.js";

const dir = mkdtempSync(join(tmpdir(), "ddnn-profile-views-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const bundle = join(root, "models", "fashion-views3");
const CAPTURES = 45;
// Correctness, not latency: f32 frames (what eval computes with), a deadline and a fusion window a
// loaded machine meets, so every capture is fused from all three views in both passes (the window
// closes as soon as every view came; under load a device's first views lag by a second or more).
const exact = [
  "--limit",
  String(CAPTURES),
  "--fps",
  "45",
  "--dtype",
  "f32",
  "--compression",
  "none",
  "--deadline-ms",
  "10000",
  "--fusion-window-ms",
  "4000",
];

interface EvalJson {
  samples: number;
  stages: { name: string; exitRate: number; accuracyAll: number; accuracyExited: number | null }[];
  overall: number;
  ideal: number;
}

async function evalJson(args: readonly string[] = []): Promise<EvalJson> {
  const r = await ddnn([
    "eval",
    "--bundle",
    bundle,
    "--limit",
    String(CAPTURES),
    ...args,
    "--json",
  ]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as EvalJson;
}

describe("ddnn profile on a multi-view bundle", () => {
  it("reports the horizontal configuration's Table II from the distributed run, equal to eval; ddnn up --views gives the same Ideal", async () => {
    const json = join(dir, "views.json");
    const html = join(dir, "views.html");
    const [profiled, up, e, view0] = await Promise.all([
      ddnn([
        "profile",
        "--bundle",
        bundle,
        ...exact,
        "--sweep-steps",
        "5",
        "--json",
        json,
        "--html",
        html,
      ]),
      ddnn(["up", "--views", "3", ...exact, "--json"]),
      evalJson(),
      evalJson(["--missing-views", "1", "--missing-views", "2"]),
    ]);
    expect(profiled.code, profiled.stderr).toBe(0);
    expect(up.code, up.stderr).toBe(0);
    const p = JSON.parse(readFileSync(json, "utf8")) as ProfileReport;
    const [ds] = p.tableII;
    const v = p.views!;

    // Every capture fused from all three views, the same answer on every device, none degraded,
    // and the probe pass fused every capture the same way.
    expect(p.run.samples).toBe(CAPTURES);
    expect(p.run.devices).toBe(3);
    expect(p.tableII).toHaveLength(1);
    expect(ds!.degraded).toBe(0);
    expect(v.capturesFusedComplete).toBe(CAPTURES);
    expect(v.sameAnswerOnEveryDevice).toBe(CAPTURES);
    expect(v.agreementWithInProcess).toBe(1);
    expect(v.probePass).toMatchObject({ answered: CAPTURES, degraded: 0, differed: 0 });
    expect(p.probe).toEqual({ complete: CAPTURES, missing: {}, failed: 0 });

    // Table II from the distributed run equals the in-process evaluation.
    expect(p.exits.map((x) => x.exitRate)).toEqual(e.stages.map((s) => s.exitRate));
    expect(p.exits.map((x) => x.accuracyAll)).toEqual(e.stages.map((s) => s.accuracyAll));
    expect(p.exits.map((x) => x.accuracyExited)).toEqual(e.stages.map((s) => s.accuracyExited));
    expect(ds!.accuracy.local).toBe(e.stages[0]!.accuracyAll);
    expect(ds!.accuracy.server).toBe(e.stages[1]!.accuracyExited);
    expect(ds!.accuracy.overall).toBe(e.overall);
    expect(ds!.accuracy.ideal).toBe(e.ideal);
    expect(v.inProcess.ideal).toBe(e.ideal);
    // Each device alone: view 0's device is eval with views 1 and 2 missing.
    expect(v.devices).toHaveLength(3);
    expect(v.devices[0]!.aloneOverall).toBe(view0.overall);
    expect(v.devices[0]!.aloneAccuracy).toBe(view0.stages[0]!.accuracyAll);
    for (const d of v.devices) expect(d).toMatchObject({ answered: CAPTURES, degraded: 0 });

    // Times measured on the devices; the server's compute only for what went on.
    for (const t of ["device", "server", "comm", "total"] as const)
      expect(ds!.timingsMs[t]?.n).toBe(CAPTURES);
    expect(ds!.timingsMs.device!.mean).toBeGreaterThan(0);
    expect(ds!.timingsMs.total!.mean).toBeGreaterThan(ds!.timingsMs.device!.mean);

    // Bytes as the broker carried them: three view frames per capture, one request per capture
    // that went on.
    const forwarded = Math.round(e.stages[1]!.exitRate * CAPTURES);
    expect(v.bytes.forwarded).toBe(forwarded);
    expect(v.bytes.viewFrame).toBeGreaterThan(0);
    expect(ds!.bytesPerOffload).toBe(v.bytes.viewFrame);
    expect(v.bytes.perCapture).toBeCloseTo(
      3 * v.bytes.viewFrame! + (forwarded * (v.bytes.forwardedFrame ?? 0)) / CAPTURES,
      6,
    );

    // The sweep over the aggregator's threshold: at the threshold the run used it predicts the
    // run's exit rate and Overall; at 0 every capture goes on (the server's accuracy over all).
    expect(p.sweep?.samples).toBe(CAPTURES);
    const sweep = p.sweep!.exits[0]!;
    expect(sweep.exit).toBe("device");
    const at = (t: number) => sweep.points.find((x) => Math.abs(x.threshold - t) < 1e-9)!;
    // The shipped aggregator threshold, 0.4, is a point of the 5-step grid.
    const now = at(sweep.currentThreshold);
    expect(now.exitRate).toBe(e.stages[0]!.exitRate);
    expect(now.overallAccuracy).toBe(e.overall);
    expect(at(0).exitRate).toBe(0);
    expect(at(0).overallAccuracy).toBe(e.stages[1]!.accuracyAll);
    expect(at(0).bytesPerSample).toBeGreaterThan(at(1).bytesPerSample);

    // The advice moves thresholds only: with no latency bound, the sweep's most accurate setting.
    expect(p.advice?.placement).toBeNull();
    expect(Object.keys(p.advice?.bestHere?.thresholds ?? {})).toEqual(["device"]);
    expect(p.advice?.bestHere?.overallAccuracy).toBe(
      Math.max(...sweep.points.map((x) => x.overallAccuracy)),
    );

    // The text and HTML forms carry the horizontal section.
    expect(profiled.stdout).toMatch(/local aggregate of 3 views/);
    expect(profiled.stdout).toMatch(/view 2's device alone/);
    const page = readFileSync(html, "utf8");
    expect(page).toContain('id="views"');
    expect(page).toContain('data-chart="views-accuracy"');

    // ddnn up --views: the same run's Table II, now with Ideal from its probe pass.
    const u = JSON.parse(up.stdout) as {
      captures: number;
      deviceAndServer: { ideal: number | null; overall: number; agreementWithInProcess: number };
    };
    expect(u.captures).toBe(CAPTURES);
    expect(u.deviceAndServer.agreementWithInProcess).toBe(1);
    expect(u.deviceAndServer.overall).toBe(e.overall);
    expect(u.deviceAndServer.ideal).toBe(e.ideal);
  }, 180_000);
});
