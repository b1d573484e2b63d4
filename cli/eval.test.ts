import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { beforeAll, describe, expect, it } from "vitest";
import { encodeIdx } from "../core/dataset/idx.js";
import {
  type FixtureStage,
  packBundle,
  smallStages,
  tempDir,
  writeBundle,
} from "../test/support/bundle-fixture.js";
import { forward } from "../test/support/onnx-model.js";
import { ddnn } from "../test/support/run.js";

interface Report {
  samples: number;
  stages: { name: string; exitRate: number; accuracyAll: number; accuracyExited: number }[];
  overall: number;
  ideal: number;
}

/**
 * The report worked out by hand in float64 from the fixture's weights, apart from onnxruntime and
 * the project's pipeline: x = (u8/255 - 0.5)/0.25, each stage's logits, eta = H(softmax)/ln C.
 */
function referenceReport(
  stages: FixtureStage[],
  pixels: Uint8Array,
  truth: Uint8Array,
  n: number,
  thresholds: number[],
): { report: Report; closest: number } {
  const per = pixels.length / n;
  let x = Float32Array.from(pixels.subarray(0, n * per), (u) => (u / 255 - 0.5) / 0.25);
  const labels: number[][] = [];
  const etas: number[][] = [];
  for (const stage of stages) {
    const { features, logits } = forward(stage, x, n);
    const c = stage.classes;
    const l: number[] = [];
    const e: number[] = [];
    for (let i = 0; i < n; i++) {
      const row = Array.from(logits.subarray(i * c, (i + 1) * c));
      const max = Math.max(...row);
      const z = row.reduce((a, v) => a + Math.exp(v - max), 0);
      const p = row.map((v) => Math.exp(v - max) / z);
      l.push(row.indexOf(max));
      e.push(-p.reduce((a, q) => a + (q > 0 ? q * Math.log(q) : 0), 0) / Math.log(c));
    }
    labels.push(l);
    etas.push(e);
    if (features) x = Float32Array.from(features);
  }
  const k = stages.length;
  const exited = new Array<number>(k).fill(0);
  const exitedRight = new Array<number>(k).fill(0);
  let overall = 0;
  let ideal = 0;
  let closest = Number.POSITIVE_INFINITY;
  for (let i = 0; i < n; i++) {
    let at = k - 1;
    for (let s = 0; s < k - 1; s++) {
      closest = Math.min(closest, Math.abs(etas[s]![i]! - thresholds[s]!));
      if (etas[s]![i]! < thresholds[s]!) {
        at = s;
        break;
      }
    }
    const right = labels[at]![i] === truth[i];
    exited[at]! += 1;
    if (right) {
      exitedRight[at]! += 1;
      overall += 1;
    }
    if (labels.some((l) => l[i] === truth[i])) ideal += 1;
  }
  const report: Report = {
    samples: n,
    stages: stages.map((s, j) => ({
      name: s.name,
      exitRate: exited[j]! / n,
      accuracyAll: labels[j]!.filter((v, i) => v === truth[i]).length / n,
      accuracyExited: exited[j] ? exitedRight[j]! / exited[j]! : 0,
    })),
    overall: overall / n,
    ideal: ideal / n,
  };
  return { report, closest };
}

function expectReport(actual: Report, expected: Report): void {
  expect(actual.samples).toBe(expected.samples);
  expect(actual.stages.map((s) => s.name)).toEqual(expected.stages.map((s) => s.name));
  actual.stages.forEach((s, j) => {
    const e = expected.stages[j]!;
    expect(s.exitRate).toBeCloseTo(e.exitRate, 12);
    expect(s.accuracyAll).toBeCloseTo(e.accuracyAll, 12);
    expect(s.accuracyExited).toBeCloseTo(e.accuracyExited, 12);
  });
  expect(actual.overall).toBeCloseTo(expected.overall, 12);
  expect(actual.ideal).toBeCloseTo(expected.ideal, 12);
}

const pct = (v: number) => `${(v * 100).toFixed(2)}%`;

describe("ddnn eval", () => {
  let bundle: string;
  let images: string;
  let labels: string;
  const n = 200;
  const stages = smallStages();
  const px = Uint8Array.from({ length: n * 16 }, (_, i) => (i * 37 + (i >> 4) * 11) % 256);
  const truth = Uint8Array.from({ length: n }, (_, i) => i % 3);

  beforeAll(() => {
    bundle = writeBundle(stages).dir;
    const dir = tempDir();
    images = join(dir, "images.gz");
    labels = join(dir, "labels");
    writeFileSync(images, gzipSync(encodeIdx([n, 4, 4], px)));
    writeFileSync(labels, encodeIdx([n], truth));
  });

  it("prints one JSON object in the documented shape", async () => {
    const r = await ddnn([
      "eval",
      "--bundle",
      bundle,
      "--images",
      images,
      "--labels",
      labels,
      "--json",
    ]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as Report;
    expect(Object.keys(report)).toEqual(["samples", "stages", "overall", "ideal"]);
    const expected = referenceReport(stages, px, truth, n, [0.5]);
    // No sample sits so near the threshold that float32 against float64 could move its exit.
    expect(expected.closest).toBeGreaterThan(1e-4);
    // Both exits take part, so a wrong exit rule or a swapped stage shows in the numbers.
    expect(expected.report.stages[0]!.exitRate).toBeGreaterThan(0.05);
    expect(expected.report.stages[0]!.exitRate).toBeLessThan(0.95);
    expectReport(report, expected.report);
  });

  it("prints the accuracy table, honours --limit and --threshold, and reads .tar.gz bundles", async () => {
    const r = await ddnn([
      "eval",
      "--bundle",
      packBundle(bundle),
      "--images",
      images,
      "--labels",
      labels,
      "--limit",
      "50",
      "--threshold",
      "device=1",
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/samples 50/);
    expect(r.stdout).toMatch(/device < 1, server: always/);
    // Threshold 1 sends every one of the 50 samples out at the device.
    const { report } = referenceReport(stages, px, truth, 50, [1]);
    const device = report.stages[0]!;
    const server = report.stages[1]!;
    expect(device.exitRate).toBe(1);
    const row = (name: string) =>
      r.stdout
        .split("\n")
        .find((l) => l.startsWith(`${name} `))
        ?.trim()
        .split(/\s+/)
        .slice(1, 4);
    expect(row("device")).toEqual([pct(1), pct(device.accuracyAll), pct(device.accuracyExited)]);
    expect(row("server")).toEqual([pct(0), pct(server.accuracyAll), "-"]);
    expect(r.stdout).toContain(`Overall ${pct(report.overall)}   Ideal ${pct(report.ideal)}`);
  });

  it("sweeps the first exit's threshold from 0.05 to 0.95", async () => {
    const r = await ddnn([
      "eval",
      "--bundle",
      bundle,
      "--images",
      images,
      "--labels",
      labels,
      "--sweep",
      "--json",
    ]);
    expect(r.code).toBe(0);
    const rows = JSON.parse(r.stdout) as { threshold: number; stages: { exitRate: number }[] }[];
    expect(rows.map((x) => x.threshold)).toEqual([
      0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85,
      0.9, 0.95,
    ]);
    const firstExit = rows.map((x) => x.stages[0]!.exitRate);
    expect(firstExit).toEqual([...firstExit].sort((a, b) => a - b));
  });

  it("refuses bad flags with one line naming the flag, exit code 2", async () => {
    const cases: [string[], RegExp][] = [
      [["--limit", "0"], /^ddnn: --limit: must be at least 1\n$/],
      [
        ["--threshold", "device=2"],
        /^ddnn: --threshold device=2: expected stage=value with value between 0 and 1\n$/,
      ],
      [
        ["--threshold", "edge=0.2"],
        /^ddnn: --threshold: unknown stage "edge" \(stages: device, server\)\n$/,
      ],
      [["--frobnicate"], /^ddnn: Unknown option '--frobnicate'/],
    ];
    for (const [flags, message] of cases) {
      const r = await ddnn([
        "eval",
        "--bundle",
        bundle,
        "--images",
        images,
        "--labels",
        labels,
        ...flags,
      ]);
      expect(r.stderr).toMatch(message);
      expect(r.code).toBe(2);
    }
  });

  it("refuses images that do not fit the bundle and a broken bundle with one line, exit code 2", async () => {
    const dir = tempDir();
    const wrong = join(dir, "wrong");
    writeFileSync(wrong, encodeIdx([2, 5, 5], new Uint8Array(50)));
    const r = await ddnn(["eval", "--bundle", bundle, "--images", wrong, "--labels", labels]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(
      /--images: items have shape \[5, 5\], the bundle's input.shape is \[1, 4, 4\]/,
    );
    const broken = writeBundle(smallStages(), {
      edit: (m) => {
        m.labels = ["only-one"];
      },
    }).dir;
    const b = await ddnn(["eval", "--bundle", broken, "--images", images, "--labels", labels]);
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/^ddnn: \S+ddnn\.json: labels: needs at least two labels[^\n]*\n$/);
  });
});
