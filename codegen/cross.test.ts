/**
 * The generated program cross-compiled for 32-bit ARM (the Odroid-XU4's instruction set) and for
 * aarch64, statically linked and run under qemu-user, and built for x86-64 with other vector
 * widths: the same features, logits, entropies, decisions and table as the x86 build, byte for byte.
 */
import { execFile } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { gunzipSync } from "node:zlib";
import { beforeAll, describe, expect, it } from "vitest";
import { readBundle } from "../core/bundle/read.js";
import { pseudoPixels, tempDir } from "../test/support/bundle-fixture.js";
import { requireProgram } from "../test/support/programs.js";
import { root } from "../test/support/run.js";
import { generateC, writeGenerated } from "./generate.js";
import { operators2d } from "./operator-models.js";
import { idxBytes } from "./test-models.js";

const run = promisify(execFile);
const work = tempDir("ddnn-codegen-cross-");

// x86-64 is built for this machine (-march=native: 16 lanes with AVX-512), for the baseline
// instruction set (4 lanes), and as plain C loops (DNN_PORTABLE): the kernels' floats must not
// depend on the vector width.
const strict = "-std=c99 -ffp-contract=off -Wall -Wextra -Werror -O3";
const targets = [
  { name: "x86-64", cc: "gcc", runner: [] as string[], make: [] as string[] },
  { name: "x86-64-baseline", cc: "gcc", runner: [], make: ["ARCH_FLAGS="] },
  { name: "x86-64-portable", cc: "gcc", runner: [], make: [`CFLAGS=${strict} -DDNN_PORTABLE`] },
  { name: "armhf", cc: "arm-linux-gnueabihf-gcc", runner: ["qemu-arm"], make: [] },
  { name: "aarch64", cc: "aarch64-linux-gnu-gcc", runner: ["qemu-aarch64"], make: [] },
];
const others = targets.map((t) => t.name).filter((n) => n !== "x86-64");

/** The first `count` items of an idx file (gzipped or not), as a plain idx file. */
function firstItems(path: string, count: number, out: string): string {
  let bytes = new Uint8Array(readFileSync(path));
  if (bytes[0] === 0x1f) bytes = new Uint8Array(gunzipSync(bytes));
  const rank = bytes[3]!;
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const shape = Array.from({ length: rank }, (_, i) => view.getUint32(4 + 4 * i, false));
  const per = shape.slice(1).reduce((a, b) => a * b, 1);
  const body = bytes.subarray(4 + 4 * rank, 4 + 4 * rank + count * per);
  writeFileSync(out, idxBytes([count, ...shape.slice(1)], body));
  return out;
}

async function outputsFor(bundlePath: string, name: string, images: string, labels: string) {
  const src = join(work, name, "src");
  await writeGenerated(generateC(await readBundle(bundlePath)), src);
  const results: Record<string, { stdout: string; predictions: string; outputs: Buffer }> = {};
  for (const t of targets) {
    const dir = join(work, name, t.name);
    mkdirSync(dir, { recursive: true });
    // Plain idx files, no zlib: a static cross build needs only the C library.
    await run("nice", [
      "make",
      "-s",
      "-C",
      src,
      `CC=${t.cc}`,
      "LDFLAGS=-static",
      "ZLIB=0",
      ...t.make,
      "clean",
      "all",
    ]);
    copyFileSync(join(src, "ddnn-device"), join(dir, "ddnn-device"));
    const args = [
      join(dir, "ddnn-device"),
      "--eval",
      images,
      labels,
      "--json",
      "--predictions",
      join(dir, "p.jsonl"),
      "--outputs",
      join(dir, "o.f32"),
    ];
    const [cmd, ...rest] = [...t.runner, ...args];
    const { stdout } = await run(cmd!, rest);
    results[t.name] = {
      stdout,
      predictions: readFileSync(join(dir, "p.jsonl"), "utf8"),
      outputs: readFileSync(join(dir, "o.f32")),
    };
  }
  return results;
}

beforeAll(() => {
  for (const p of [
    "gcc",
    "make",
    "arm-linux-gnueabihf-gcc",
    "aarch64-linux-gnu-gcc",
    "qemu-arm",
    "qemu-aarch64",
  ])
    requireProgram(p);
});

describe("ddnn-device on 32-bit ARM and aarch64 (qemu-user)", () => {
  it("fashion-shallow (bit-packed layers): identical to x86", async () => {
    const images = firstItems(
      join(root, "models/eval/fashion-mnist-t10k-2000-images-idx3-ubyte.gz"),
      60,
      join(work, "images.idx"),
    );
    const labels = firstItems(
      join(root, "models/eval/fashion-mnist-t10k-2000-labels-idx1-ubyte.gz"),
      60,
      join(work, "labels.idx"),
    );
    const r = await outputsFor(join(root, "models/fashion-shallow"), "shallow", images, labels);
    expect(JSON.parse(r["x86-64"]!.stdout).samples).toBe(60);
    for (const t of others) {
      expect(r[t]!.stdout, t).toBe(r["x86-64"]!.stdout);
      expect(r[t]!.predictions, t).toBe(r["x86-64"]!.predictions);
      expect(r[t]!.outputs.equals(r["x86-64"]!.outputs), `${t} outputs`).toBe(true);
    }
  });

  it("every operator (Sigmoid through libm, pools, broadcasting): identical to x86", async () => {
    const bundle = operators2d(work);
    const count = 40;
    const images = join(work, "ops-images.idx");
    const labels = join(work, "ops-labels.idx");
    writeFileSync(images, idxBytes([count, 3, 12, 12], pseudoPixels(count, 432, 21)));
    writeFileSync(
      labels,
      idxBytes(
        [count],
        Uint8Array.from({ length: count }, (_, i) => i % 10),
      ),
    );
    const r = await outputsFor(bundle, "ops", images, labels);
    for (const t of others) {
      expect(r[t]!.stdout, t).toBe(r["x86-64"]!.stdout);
      expect(r[t]!.predictions, t).toBe(r["x86-64"]!.predictions);
      expect(r[t]!.outputs.equals(r["x86-64"]!.outputs), `${t} outputs`).toBe(true);
    }
  });
});
