/** `ddnn codegen c`: what it writes, what it refuses, and that the same bundle gives the same bytes. */
import { execFile } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { runCodegen } from "../cli/codegen.js";
import { describeFailure } from "../cli/failure.js";
import { readBundle } from "../core/bundle/read.js";
import { tempDir } from "../test/support/bundle-fixture.js";
import { root } from "../test/support/run.js";
import { floatLiteral } from "./emit.js";
import { generateC } from "./generate.js";
import { readOnnx } from "./onnx.js";
import { unsupportedOperator } from "./operator-models.js";

const run = promisify(execFile);
const shallow = join(root, "models/fashion-shallow");
const demo = join(root, "examples/demo-bundle.tar.gz");

async function codegen(args: string[]): Promise<{ code: number; out: string }> {
  const lines: string[] = [];
  try {
    return { code: await runCodegen(args, (t) => lines.push(t)), out: lines.join("\n") };
  } catch (err) {
    const failure = describeFailure(err);
    return { code: failure.code, out: failure.text };
  }
}

describe("ddnn codegen c", () => {
  it("writes the model, the libraries, the program and a Makefile, and says what it packed", async () => {
    const out = join(tempDir("ddnn-codegen-"), "shallow");
    const r = await codegen(["c", "--bundle", shallow, "--stage", "device", "--out", out]);
    expect(r.code).toBe(0);
    expect(readdirSync(out).sort()).toEqual([
      "Makefile",
      "codegen.json",
      "ddnn_device.c",
      "ddnn_mqtt.c",
      "dev_model_infer.c",
      "dev_model_infer.h",
      "dnn_c_lib.c",
      "dnn_c_lib.h",
      "tool_lib.c",
      "tool_lib.h",
    ]);
    expect(r.out).toContain("bit-packed conv /body/body.4/Conv + /body/body.6/Relu");
    expect(r.out).toContain("bit-packed gemm /head/head.1/Gemm");
    const report = JSON.parse(readFileSync(join(out, "codegen.json"), "utf8"));
    expect(report.packed.map((p: { layer: string }) => p.layer)).toEqual([
      "/body/body.4/Conv + /body/body.6/Relu",
      "/head/head.1/Gemm",
    ]);
    // 1 bit per weight plus one float per output channel: about 30 times smaller.
    for (const p of report.packed) expect(p.bytesBefore / p.bytesAfter).toBeGreaterThan(28);
    expect(report.weightBytesUnpacked / report.weightBytes).toBeGreaterThan(20);
    const model = readFileSync(join(out, "dev_model_infer.c"), "utf8");
    expect(model).toContain("static const uint8_t L2_bits[");
    // The binarized convolution runs from its bits, with the max pooling after it in the same pass.
    expect(model).toContain("dnn_conv2d_rows_bits_maxpool(&L1, &L1_pool,");
    expect(model).not.toMatch(/malloc|calloc/);
    const makefile = readFileSync(join(out, "Makefile"), "utf8");
    expect(makefile).toContain("CFLAGS = -std=c99 -ffp-contract=off -Wall -Wextra -Werror -O3");
    expect(makefile).toContain("ARCH_FLAGS :=");
  });

  it("keeps binarized weights as floats with --no-pack", async () => {
    const out = join(tempDir("ddnn-codegen-"), "unpacked");
    const r = await codegen(["c", "--bundle", shallow, "--out", out, "--no-pack", "--json"]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out);
    expect(report.packed).toEqual([]);
    expect(report.weightBytes).toBe(report.weightBytesUnpacked);
  });

  it("gives the same bytes for the same bundle, from a directory or an archive", async () => {
    const a = generateC(await readBundle(shallow));
    const b = generateC(await readBundle(shallow));
    expect([...a.files.keys()]).toEqual([...b.files.keys()]);
    for (const [name, text] of a.files) expect(b.files.get(name), name).toBe(text);
    const c = generateC(await readBundle(demo), { stage: "device" });
    const d = generateC(await readBundle(demo), { stage: "device" });
    for (const [name, text] of c.files) expect(d.files.get(name), name).toBe(text);
  });

  it("refuses an operator it does not have with one line naming the node and the operator (exit 2)", async () => {
    const bundle = unsupportedOperator(tempDir("ddnn-codegen-"));
    const r = await codegen(["c", "--bundle", bundle, "--out", join(bundle, "out")]);
    expect(r.code).toBe(2);
    expect(r.out.trim().split("\n")).toHaveLength(1);
    expect(r.out).toMatch(/node "softmax_logits" \(Softmax\): operator Softmax is not supported/);
    expect(r.out).toContain("device.onnx");
  });

  it("names the stages when --stage is wrong, and requires --bundle and --out", async () => {
    const r = await codegen(["c", "--bundle", shallow, "--stage", "edge", "--out", "/tmp/x"]);
    expect(r.code).toBe(2);
    expect(r.out).toContain('no stage "edge" (its stages: device, server)');
    expect((await codegen(["c", "--out", "/tmp/x"])).out).toContain("--bundle is required");
    expect((await codegen(["opencl2"])).code).toBe(2);
  });

  it("generates any stage of a bundle, taking the previous stage's features as its input", async () => {
    const g = generateC(await readBundle(join(root, "models/fashion-3tier")), { stage: "edge" });
    const header = g.files.get("dev_model_infer.h")!;
    expect(header).toContain("#define DEV_MODEL_INPUT_SIZE 1568");
    expect(g.report.featuresShape).toEqual([64, 3, 3]);
  });

  it("builds with make and the strict flags, and prints the exit table", async () => {
    const out = join(tempDir("ddnn-codegen-"), "demo");
    mkdirSync(out, { recursive: true });
    expect((await codegen(["c", "--bundle", demo, "--out", out])).code).toBe(0);
    await run("nice", ["make", "-s", "-C", out]);
    const images = join(root, "models/eval/fashion-mnist-t10k-2000-images-idx3-ubyte.gz");
    const labels = join(root, "models/eval/fashion-mnist-t10k-2000-labels-idx1-ubyte.gz");
    const { stdout } = await run(join(out, "ddnn-device"), [
      "--eval",
      images,
      labels,
      "--limit",
      "50",
    ]);
    expect(stdout).toContain("demo-3stage 1.0.0  stage device  samples 50");
    expect(stdout).toMatch(/exit rate\s+accuracy \(all\)\s+accuracy \(exited\)/);
    const bad = await run(join(out, "ddnn-device"), [
      "--eval",
      images,
      labels,
      "--threshold",
      "2",
    ]).catch((e: { code: number; stderr: string }) => e);
    expect(bad).toMatchObject({ code: 2, stderr: expect.stringContaining("--threshold") });
  });
});

describe("the ONNX reader and the C literals", () => {
  it("reads the shipped device graph", () => {
    const m = readOnnx(readFileSync(join(root, "models/fashion-deep/device.onnx")));
    expect(m.nodes.map((n) => n.opType)).toEqual(["Conv", "Relu", "MaxPool", "Flatten", "Gemm"]);
    expect(m.initializers.get("head.1.weight")?.dims).toEqual([10, 1568]);
    expect(m.opsets.get("")).toBe(13);
  });

  it("writes floats that read back as the same float32", () => {
    for (const v of [0.1, -3.5e-8, 1e30, 123456.7, 1, -0.5, 2 ** -140]) {
      const f = Math.fround(v);
      const text = floatLiteral(f);
      expect(text).toMatch(/^-?[0-9.]+(e[-+][0-9]+)?f$/);
      expect(Math.fround(Number(text.slice(0, -1)))).toBe(f);
    }
  });
});
