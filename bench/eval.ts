/**
 * How long `ddnn eval` takes over 10,000 samples, end to end (process start, bundle load and
 * verification, every stage on every sample), batched against unbatched in the same run.
 *
 *   npm run bench -- [--bundle DIR] [--images IDX --labels IDX] [--samples N] [--repeat R]
 *
 * Without --images it uses the full Fashion-MNIST test set from Debian's dataset-fashion-mnist
 * when present, else the shipped 2,000-image sample repeated to --samples.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs, promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { packageRoot, shipped } from "../cli/paths.js";
import { renderTable } from "../cli/table.js";
import { encodeIdx, readIdx } from "../core/dataset/idx.js";

const exec = promisify(execFile);
const { values } = parseArgs({
  options: {
    bundle: { type: "string" },
    images: { type: "string" },
    labels: { type: "string" },
    samples: { type: "string", default: "10000" },
    repeat: { type: "string", default: "3" },
    batches: { type: "string", default: "1,32,256,1024" },
  },
});
const samples = Number(values.samples);
const repeat = Number(values.repeat);
const batches = values.batches.split(",").map(Number);
const defaults = shipped();
const bundle = values.bundle ?? defaults.bundle;
const fashion = "/usr/share/datasets/fashion-mnist";

async function dataset(): Promise<{ images: string; labels: string; source: string }> {
  if (values.images && values.labels)
    return { images: values.images, labels: values.labels, source: values.images };
  if (existsSync(join(fashion, "t10k-images-idx3-ubyte.gz"))) {
    return {
      images: join(fashion, "t10k-images-idx3-ubyte.gz"),
      labels: join(fashion, "t10k-labels-idx1-ubyte.gz"),
      source: "Fashion-MNIST test set",
    };
  }
  // Tile the shipped sample up to the requested count.
  const img = await readIdx(defaults.images);
  const lab = await readIdx(defaults.labels);
  const per = img.data.length / (img.shape[0] ?? 1);
  const tiledImages = new Uint8Array(samples * per);
  const tiledLabels = new Uint8Array(samples);
  for (let i = 0; i < samples; i++) {
    const j = i % (img.shape[0] ?? 1);
    tiledImages.set(img.data.subarray(j * per, (j + 1) * per), i * per);
    tiledLabels[i] = lab.data[j] ?? 0;
  }
  const dir = mkdtempSync(join(tmpdir(), "ddnn-bench-"));
  writeFileSync(
    join(dir, "images.gz"),
    gzipSync(encodeIdx([samples, ...img.shape.slice(1)], tiledImages)),
  );
  writeFileSync(join(dir, "labels.gz"), gzipSync(encodeIdx([samples], tiledLabels)));
  return {
    images: join(dir, "images.gz"),
    labels: join(dir, "labels.gz"),
    source: "shipped sample, tiled",
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? Number.NaN;
}

const data = await dataset();
const cli = join(packageRoot(), "dist", "cli", "main.js");
const rows: { batch: number; wallS: number; overall: number }[] = [];
for (const batch of batches) {
  const times: number[] = [];
  let overall = Number.NaN;
  for (let r = 0; r < repeat; r++) {
    const started = performance.now();
    const { stdout } = await exec(
      process.execPath,
      [
        cli,
        "eval",
        "--bundle",
        bundle,
        "--images",
        data.images,
        "--labels",
        data.labels,
        "--limit",
        String(samples),
        "--batch-size",
        String(batch),
        "--json",
      ],
      { maxBuffer: 64 * 1024 * 1024 },
    );
    times.push((performance.now() - started) / 1000);
    overall = JSON.parse(stdout).overall;
  }
  rows.push({ batch, wallS: median(times), overall });
}

const baseline = rows.find((r) => r.batch === 1) ?? rows[0]!;
const best = rows.reduce((a, b) => (b.wallS < a.wallS ? b : a));
console.log(
  `ddnn eval over ${samples} samples (${data.source}), bundle ${bundle}, median of ${repeat} runs, whole process`,
);
console.log("");
console.log(
  renderTable(
    ["batch size", "wall s", "samples/s", "speed-up vs batch 1", "Overall"],
    rows.map((r) => [
      String(r.batch),
      r.wallS.toFixed(2),
      Math.round(samples / r.wallS).toString(),
      `${(baseline.wallS / r.wallS).toFixed(2)}x`,
      `${(r.overall * 100).toFixed(2)}%`,
    ]),
  ),
);
const defaultRow = rows.find((r) => r.batch === 256);
const goal = defaultRow ? defaultRow.wallS < 5 : undefined;
console.log("");
console.log(
  `goal 4: default batch (256) under 5 s for ${samples} samples: ${goal === undefined ? "not measured" : goal ? "met" : "NOT met"}`,
);
console.log(
  JSON.stringify({
    bench: "eval",
    samples,
    repeat,
    rows,
    speedupBest: baseline.wallS / best.wallS,
    goalMet: goal ?? null,
  }),
);

// Like the other benchmarks: a goal that is not met fails the run.
if (goal === false) process.exitCode = 1;
