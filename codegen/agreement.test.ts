/**
 * The generated C against onnxruntime, built with the real gcc: features and logits within 1e-4
 * (relative, or absolute below 1), and the same label and exit decision for every sample except
 * those whose entropy lies within 1e-5 of the threshold. Covers every shipped and example device
 * stage, random-weight bundles of other shapes from the trainer's `synth`, and hand-written graphs
 * with every operator the generator supports.
 */
import { execFile, execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { gunzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pseudoPixels, tempDir } from "../test/support/bundle-fixture.js";
import { requireProgram } from "../test/support/programs.js";
import { root } from "../test/support/run.js";
import { type Agreement, agreement, buildStage, ortOutputs, runDevice } from "./harness.js";
import { operators1d, operators2d } from "./operator-models.js";
import { idxBytes } from "./test-models.js";

const run = promisify(execFile);
const evalImages = join(root, "models/eval/fashion-mnist-t10k-2000-images-idx3-ubyte.gz");
const evalLabels = join(root, "models/eval/fashion-mnist-t10k-2000-labels-idx1-ubyte.gz");
const fullImages = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
const fullLabels = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz";

function idxData(path: string): { shape: number[]; data: Uint8Array } {
  let bytes = new Uint8Array(readFileSync(path));
  if (bytes[0] === 0x1f) bytes = new Uint8Array(gunzipSync(bytes));
  const rank = bytes[3]!;
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const shape = Array.from({ length: rank }, (_, i) => view.getUint32(4 + 4 * i, false));
  return { shape, data: bytes.subarray(4 + 4 * rank) };
}

const work = tempDir("ddnn-codegen-agree-");
const results: Record<string, Agreement & { seconds?: number }> = {};

/** Random u8 samples of the bundle's input shape, written as idx images and labels. */
function randomSet(
  dir: string,
  shape: readonly number[],
  classes: number,
  count: number,
  seed: number,
) {
  const per = shape.reduce((a, b) => a * b, 1);
  const pixels = pseudoPixels(count, per, seed);
  const labels = Uint8Array.from({ length: count }, (_, i) => (i * 7 + seed) % classes);
  const images = join(dir, "images.idx");
  const labelFile = join(dir, "labels.idx");
  writeFileSync(images, idxBytes([count, ...shape], pixels));
  writeFileSync(labelFile, idxBytes([count], labels));
  return { images, labels: labelFile };
}

async function check(
  name: string,
  bundlePath: string,
  data: { images: string; labels: string },
  options: { ortBatch?: number } = {},
): Promise<Agreement> {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  const built = await buildStage(bundlePath, dir);
  const started = performance.now();
  const device = await runDevice(built.program, data.images, data.labels, dir);
  const seconds = (performance.now() - started) / 1000;
  const images = idxData(data.images);
  const count = images.shape[0]!;
  const manifest = built.bundle.manifest;
  const ort = await ortOutputs(built.bundle, images.data, count, options.ortBatch);
  const stage = manifest.stages[0]!;
  const last = manifest.stages.length === 1;
  const threshold = last ? undefined : stage.exit?.threshold;
  const a = agreement(device, ort, manifest.labels.length, threshold);
  results[name] = { ...a, seconds };
  expect(a.samples).toBe(count);
  expect(a.maxError).toBeLessThanOrEqual(1e-4);
  expect(a.labelMismatches).toBe(0);
  expect(a.exitMismatches).toBe(a.nearThreshold);
  // The table is the one `ddnn eval --json` computes from the same decisions.
  const truth = idxData(data.labels).data;
  const exited = device.predictions.filter((p) => p.exited);
  expect(device.table.samples).toBe(count);
  expect(device.table.stages[0]!.name).toBe(stage.name);
  expect(device.table.stages[0]!.exitRate).toBe(exited.length / count);
  expect(device.table.stages[0]!.accuracyAll).toBe(
    device.predictions.filter((p) => p.label === truth[p.index]).length / count,
  );
  expect(device.table.stages[0]!.accuracyExited).toBe(
    exited.length ? exited.filter((p) => p.label === truth[p.index]).length / exited.length : null,
  );
  return a;
}

beforeAll(() => {
  requireProgram("gcc");
  requireProgram("make");
});

afterAll(() => {
  // The figures docs/codegen.md quotes.
  console.log(`codegen agreement with onnxruntime:\n${JSON.stringify(results, null, 1)}`);
});

describe("generated C agrees with onnxruntime", () => {
  const evalSet = { images: evalImages, labels: evalLabels };
  const fullSet = { images: fullImages, labels: fullLabels };
  // The evaluation sample is the test set's first 2,000 images: the full set covers both.
  for (const bundle of ["fashion-deep", "fashion-3tier", "fashion-shallow"]) {
    it(`${bundle} device stage, the full 10,000-image test set`, async () => {
      await check(bundle, join(root, "models", bundle), fullSet);
    });
  }

  it("the example bundle (examples/demo-bundle.tar.gz), the evaluation sample", async () => {
    await check("demo", join(root, "examples/demo-bundle.tar.gz"), evalSet);
  });

  it("the ddnn eval --json table of the device stage is ddnn-device's", async () => {
    const dir = join(work, "eval-table");
    mkdirSync(dir, { recursive: true });
    const built = await buildStage(join(root, "models/fashion-shallow"), dir);
    const { stdout } = await run(built.program, ["--eval", evalImages, evalLabels, "--json"]);
    const ddnn = execFileSync(
      process.execPath,
      [
        join(root, "dist/cli/main.js"),
        "eval",
        "--bundle",
        join(root, "models/fashion-shallow"),
        "--json",
      ],
      { encoding: "utf8" },
    );
    expect(JSON.parse(stdout).stages[0]).toEqual(JSON.parse(ddnn).stages[0]);
  });

  describe("random-weight bundles of other shapes (python -m trainer synth)", () => {
    const synthDir = join(work, "synth");
    beforeAll(async () => {
      // One Python process for all three: importing torch is most of the time.
      await run(
        "nice",
        [
          "/usr/bin/python3",
          "-c",
          `
import sys, torch
torch.set_num_threads(1)
from trainer.synth import synth
out = sys.argv[1]
synth(out + "/rgb", stages=3, stage_names=None, tensor_names=["image", "features", "logits"],
      input_shape=[3, 32, 32], mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], classes=7, seed=1)
synth(out + "/mlp", stages=2, stage_names=["dev", "srv"], tensor_names=["x", "feat", "out"],
      input_shape=[20], mean=[0.5], std=[0.3], classes=4, seed=2)
synth(out + "/one", stages=1, stage_names=None, tensor_names=["image", "features", "logits"],
      input_shape=[2, 9, 13], mean=[0.1], std=[0.9], classes=3, seed=3)
`,
          synthDir,
        ],
        { cwd: root },
      );
    }, 120_000);

    const shapes: Record<string, [number[], number]> = {
      rgb: [[3, 32, 32], 7],
      mlp: [[20], 4],
      one: [[2, 9, 13], 3],
    };
    for (const [name, [shape, classes]] of Object.entries(shapes)) {
      it(`synth ${name}: input [${shape.join(", ")}], ${classes} classes`, async () => {
        const dir = join(work, `synth-${name}-data`);
        mkdirSync(dir, { recursive: true });
        await check(`synth-${name}`, join(synthDir, name), randomSet(dir, shape, classes, 400, 11));
      });
    }
  });

  describe("hand-written graphs with every supported operator", () => {
    it("2-D: strides, asymmetric pads, dilation, groups, BatchNormalization, pools, Concat, Clip, Sigmoid, broadcasting, MatMul, Gemm", async () => {
      const bundle = operators2d(work);
      const dir = join(work, "ops2d-data");
      mkdirSync(dir, { recursive: true });
      const a = await check("operators-2d", bundle, randomSet(dir, [3, 12, 12], 10, 300, 5));
      // BatchNormalization after the first Conv is folded, the one after the Sigmoid is not.
      const generated = readFileSync(join(work, "operators-2d", "dev_model_infer.c"), "utf8");
      expect(generated.match(/dnn_channel_affine\(/g)?.length).toBe(1);
      expect(a.samples).toBe(300);
    });

    it("1-D: convolution (depthwise, SAME_UPPER), pooling, Gemm with transA, a one-stage bundle", async () => {
      const bundle = operators1d(work);
      const dir = join(work, "ops1d-data");
      mkdirSync(dir, { recursive: true });
      // The graph reshapes to a fixed [30, 1]: onnxruntime runs it one sample at a time.
      await check("operators-1d", bundle, randomSet(dir, [4, 20], 5, 200, 9), { ortBatch: 1 });
    });
  });
});

describe("the device program", () => {
  it("is clean under valgrind memcheck for a whole --eval run, and its model never allocates", async () => {
    requireProgram("valgrind");
    requireProgram("nm");
    const dir = join(work, "valgrind");
    mkdirSync(dir, { recursive: true });
    // Valgrind has no AVX-512: on x86-64 the vector kernels run 8 lanes wide (AVX2) here.
    const arch = process.arch === "x64" ? ["ARCH_FLAGS=-march=native -mno-avx512f"] : [];
    const built = await buildStage(join(root, "models/fashion-shallow"), dir, arch);
    const small = randomSet(dir, [1, 28, 28], 10, 25, 3);
    await run("valgrind", [
      "--error-exitcode=99",
      "--leak-check=full",
      "--errors-for-leak-kinds=all",
      "--show-leak-kinds=all",
      "--quiet",
      built.program,
      "--eval",
      small.images,
      small.labels,
      "--json",
      "--predictions",
      join(dir, "p.jsonl"),
    ]);
    // Heap functions the model or the layer library would need if it allocated.
    const undefinedSymbols = execFileSync(
      "nm",
      ["-u", join(dir, "dev_model_infer.o"), join(dir, "dnn_c_lib.o")],
      { encoding: "utf8" },
    );
    expect(undefinedSymbols).not.toMatch(/\b(malloc|calloc|realloc|free|aligned_alloc|alloca)\b/);
    // Only libc's memory functions and libm.
    const names = undefinedSymbols
      .split("\n")
      .map((l) => l.trim().split(/\s+/).pop())
      .filter((s): s is string => !!s && !s.endsWith(":") && !s.startsWith("dnn_"));
    for (const s of names) expect(["memcpy", "memset", "expf"]).toContain(s);
  });
});
