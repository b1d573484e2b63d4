/**
 * `ddnn codegen c --target opencl`: the convolutions and matrix products as OpenCL 1.2 kernels,
 * run on PoCL (Debian's pocl-opencl-icd), against onnxruntime with the same tolerance and
 * decisions as the C target.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { pseudoPixels, tempDir } from "../test/support/bundle-fixture.js";
import { root } from "../test/support/run.js";
import { agreement, buildStage, ortOutputs, runDevice } from "./harness.js";
import { operators1d, operators2d } from "./operator-models.js";
import { idxBytes } from "./test-models.js";

const work = tempDir("ddnn-codegen-opencl-");

function firstItems(path: string, count: number): { shape: number[]; data: Uint8Array } {
  let bytes = new Uint8Array(readFileSync(path));
  if (bytes[0] === 0x1f) bytes = new Uint8Array(gunzipSync(bytes));
  const rank = bytes[3]!;
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const shape = Array.from({ length: rank }, (_, i) => view.getUint32(4 + 4 * i, false));
  const per = shape.slice(1).reduce((a, b) => a * b, 1);
  return {
    shape: [count, ...shape.slice(1)],
    data: bytes.subarray(4 + 4 * rank, 4 + 4 * rank + count * per),
  };
}

async function check(
  name: string,
  bundle: string,
  images: { shape: number[]; data: Uint8Array },
  ortBatch?: number,
) {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  const imagesFile = join(dir, "images.idx");
  const labelsFile = join(dir, "labels.idx");
  const count = images.shape[0]!;
  writeFileSync(imagesFile, idxBytes(images.shape, images.data));
  writeFileSync(
    labelsFile,
    idxBytes(
      [count],
      Uint8Array.from({ length: count }, (_, i) => i % 3),
    ),
  );
  const built = await buildStage(bundle, dir, [], { target: "opencl" });
  expect(readFileSync(join(dir, "dev_model_infer.c"), "utf8")).toMatch(/dnn_cl_(conv2d|gemm)/);
  const device = await runDevice(built.program, imagesFile, labelsFile, dir);
  const ort = await ortOutputs(built.bundle, images.data, count, ortBatch);
  const manifest = built.bundle.manifest;
  const threshold = manifest.stages.length === 1 ? undefined : manifest.stages[0]!.exit?.threshold;
  const a = agreement(device, ort, manifest.labels.length, threshold);
  console.log(`opencl ${name}: ${JSON.stringify(a)}`);
  expect(a.maxError).toBeLessThanOrEqual(1e-4);
  expect(a.labelMismatches).toBe(0);
  expect(a.exitMismatches).toBe(a.nearThreshold);
}

describe("--target opencl on PoCL agrees with onnxruntime", () => {
  const sample = join(root, "models/eval/fashion-mnist-t10k-2000-images-idx3-ubyte.gz");
  for (const bundle of ["fashion-deep", "fashion-shallow"]) {
    it(`${bundle}, 300 samples of the evaluation sample`, async () => {
      await check(bundle, join(root, "models", bundle), firstItems(sample, 300));
    });
  }

  it("every operator: groups, dilation, strides, pads, Gemm with alpha/beta/transB, MatMul; 1-D and transA", async () => {
    await check("ops2d", operators2d(work), {
      shape: [200, 3, 12, 12],
      data: pseudoPixels(200, 432, 5),
    });
    await check(
      "ops1d",
      operators1d(work),
      { shape: [100, 4, 20], data: pseudoPixels(100, 80, 9) },
      1,
    );
  });
});
