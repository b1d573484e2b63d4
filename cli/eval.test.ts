import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { beforeAll, describe, expect, it } from "vitest";
import { encodeIdx } from "../core/dataset/idx.js";
import { packBundle, smallStages, tempDir, writeBundle } from "../test/support/bundle-fixture.js";
import { ddnn } from "../test/support/run.js";

describe("ddnn eval", () => {
  let bundle: string;
  let images: string;
  let labels: string;
  const n = 200;

  beforeAll(() => {
    bundle = writeBundle(smallStages()).dir;
    const dir = tempDir();
    images = join(dir, "images.gz");
    labels = join(dir, "labels");
    const px = Uint8Array.from({ length: n * 16 }, (_, i) => (i * 37 + (i >> 4) * 11) % 256);
    writeFileSync(images, gzipSync(encodeIdx([n, 4, 4], px)));
    writeFileSync(
      labels,
      encodeIdx(
        [n],
        Uint8Array.from({ length: n }, (_, i) => i % 3),
      ),
    );
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
    const report = JSON.parse(r.stdout);
    expect(Object.keys(report)).toEqual(["samples", "stages", "overall", "ideal"]);
    expect(report.samples).toBe(n);
    expect(report.stages.map((s: { name: string }) => s.name)).toEqual(["device", "server"]);
    const rates = report.stages.reduce((a: number, s: { exitRate: number }) => a + s.exitRate, 0);
    expect(rates).toBeCloseTo(1, 12);
    expect(report.ideal).toBeGreaterThanOrEqual(report.overall);
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
    expect(r.stdout).toMatch(/device\s+100\.00%/);
    expect(r.stdout).toMatch(/Overall \d+\.\d\d%\s+Ideal \d+\.\d\d%/);
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

  it("refuses images that do not fit the bundle and a broken bundle, exit code 1 or 2", async () => {
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
    expect(b.code).toBe(1);
    expect(b.stderr).toMatch(/ddnn\.json: labels: needs at least two labels/);
  });
});
