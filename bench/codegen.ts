/**
 * The generated C device program against onnxruntime: device-stage time per sample at batch 1
 * for the C (`ddnn-device --bench`, built by the generated Makefile for this machine: -O3
 * -march=native, so AVX-512's 16 lanes where the CPU has them), onnxruntime-node and
 * onnxruntime-web (WebAssembly, the 32-bit ARM path of the Node tiers), one intra-op thread each,
 * on the same preprocessed sample; plus the C's instructions per sample under callgrind (built
 * -mno-avx512f: valgrind has no AVX-512) and the footprint of the model and layer library for
 * 32-bit ARM (flash: code, weights and constants; RAM: activations and buffers), with and without
 * bit-packing.
 *
 * Rounds alternate the order (C, node, wasm, then wasm, node, C) so drift in the machine's load hits
 * all alike; each figure is the median over rounds.
 *
 *   node dist/bench/codegen.js [--bundles fashion-deep,fashion-3tier,fashion-shallow,fashion-views3]
 *                              [--samples 2000] [--rounds 4] [--no-callgrind] [--callgrind-wasm]
 *
 * --callgrind-wasm also counts onnxruntime-web's instructions per sample under callgrind (Node and
 * the WebAssembly runtime under valgrind: about 4 minutes per bundle).
 *
 * Goals: the C at batch 1 no slower than onnxruntime-node, and at least 3x faster than the
 * WebAssembly backend, for every bundle.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
import { parseArgs, promisify } from "node:util";
import { packageRoot } from "../cli/paths.js";
import { renderTable } from "../cli/table.js";
import { generateC, writeGenerated } from "../codegen/generate.js";
import { readBundle, type VerifiedBundle } from "../core/bundle/read.js";
import { openStages, type Stage } from "../core/bundle/stages.js";
import { readIdx } from "../core/dataset/idx.js";
import { preprocess } from "../core/preprocess.js";
import { printGoals, ratio, round } from "./support/report.js";

const run = promisify(execFile);

const { values } = parseArgs({
  options: {
    bundles: {
      type: "string",
      default: "fashion-deep,fashion-3tier,fashion-shallow,fashion-views3",
    },
    samples: { type: "string", default: "2000" },
    rounds: { type: "string", default: "4" },
    "no-callgrind": { type: "boolean", default: false },
    "callgrind-wasm": { type: "boolean", default: false },
  },
});

const root = packageRoot();
const samples = Number(values.samples);
const rounds = Number(values.rounds);
const images = join(root, "models/eval/fashion-mnist-t10k-2000-images-idx3-ubyte.gz");
const work = mkdtempSync(join(tmpdir(), "ddnn-bench-codegen-"));

interface Footprint {
  text: number;
  rodata: number;
  data: number;
  bss: number;
}

/** Section sizes of the model and layer library objects, cross-compiled for 32-bit ARM. */
async function armFootprint(
  bundle: VerifiedBundle,
  pack: boolean,
  dir: string,
): Promise<Footprint> {
  await writeGenerated(generateC(bundle, { pack }), dir);
  await run("nice", ["make", "-s", "-C", dir, "CC=arm-linux-gnueabihf-gcc", "ZLIB=0", "model"]);
  const { stdout } = await run("arm-linux-gnueabihf-size", [
    "-A",
    join(dir, "dev_model_infer.o"),
    join(dir, "dnn_c_lib.o"),
  ]);
  const f: Footprint = { text: 0, rodata: 0, data: 0, bss: 0 };
  for (const line of stdout.split("\n")) {
    const [section, bytes] = line.trim().split(/\s+/);
    const n = Number(bytes);
    if (!section || !Number.isFinite(n)) continue;
    if (section === ".text") f.text += n;
    else if (section.startsWith(".rodata")) f.rodata += n;
    else if (section === ".data") f.data += n;
    else if (section === ".bss") f.bss += n;
  }
  return f;
}

async function ortPerSample(stage: Stage, x: Float32Array, shape: readonly number[], n: number) {
  const ort = stage.runtime.ort;
  const feeds = () => ({ [stage.spec.input]: new ort.Tensor("float32", x, [1, ...shape]) });
  for (let i = 0; i < 20; i++) await stage.session.run(feeds());
  const started = performance.now();
  for (let i = 0; i < n; i++) await stage.session.run(feeds());
  return ((performance.now() - started) * 1000) / n;
}

async function cPerSample(program: string, n: number): Promise<number> {
  const { stdout } = await run(program, ["--eval", images, images, "--bench", String(n)]);
  return JSON.parse(stdout).usPerSample as number;
}

/** Instructions per sample of the C (callgrind), from two run lengths so start-up cancels out. */
async function cInstructions(program: string): Promise<number> {
  const count = async (n: number) => {
    const out = join(work, `callgrind.${n}`);
    const { stderr } = await run("valgrind", [
      "--tool=callgrind",
      `--callgrind-out-file=${out}`,
      program,
      "--eval",
      images,
      images,
      "--bench",
      String(n),
    ]);
    const m = /refs:\s+([\d,]+)/.exec(stderr);
    return Number((m?.[1] ?? "0").replaceAll(",", ""));
  };
  return ((await count(60)) - (await count(10))) / 50;
}

/** onnxruntime-web's instructions per sample under callgrind, from 110 and 10 runs. */
async function wasmInstructions(bundlePath: string, shape: readonly number[]): Promise<number> {
  const module = (file: string) => JSON.stringify(pathToFileURL(join(root, "dist", file)).href);
  const script = `
import { readBundle } from ${module("core/bundle/read.js")};
import { openStages } from ${module("core/bundle/stages.js")};
const [s] = await openStages(await readBundle(process.argv[1]), { only: [0], backend: "wasm", intraOpThreads: 1 });
const x = new Float32Array(${shape.reduce((a, b) => a * b, 1)}).fill(0.5);
for (let i = 0; i < Number(process.argv[2]); i++)
  await s.session.run({ [s.spec.input]: new s.runtime.ort.Tensor("float32", x, [1, ${shape.join(", ")}]) });
await s.session.release();
`;
  const count = async (n: number) => {
    const { stderr } = await run(
      "valgrind",
      [
        "--tool=callgrind",
        `--callgrind-out-file=${join(work, `wasm.${n}`)}`,
        process.execPath,
        "--input-type=module",
        "-e",
        script,
        bundlePath,
        String(n),
      ],
      { maxBuffer: 1 << 26 },
    );
    return Number((/refs:\s+([\d,]+)/.exec(stderr)?.[1] ?? "0").replaceAll(",", ""));
  };
  return ((await count(110)) - (await count(10))) / 100;
}

/** The vector width the row kernels get from the Makefile's build for this machine. */
async function hostVectors(): Promise<string> {
  const { stdout } = await run("sh", ["-c", "gcc -march=native -dM -E - </dev/null"]);
  if (/__AVX512F__/.test(stdout)) return "AVX-512, 16 lanes";
  if (/__AVX__/.test(stdout)) return "AVX, 8 lanes";
  return "4 lanes";
}

const median = (v: number[]) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

interface Row {
  bundle: string;
  cUs: number;
  nodeUs: number;
  wasmUs: number;
  cInstructions: number | null;
  wasmInstructions: number | null;
  packed: Footprint;
  unpacked: Footprint;
  packedLayers: number;
}

async function benchBundle(name: string): Promise<Row> {
  const bundle = await readBundle(join(root, "models", name));
  const dir = join(work, name);
  await writeGenerated(generateC(bundle), join(dir, "x86"));
  await run("nice", ["make", "-s", "-C", join(dir, "x86")]);
  const program = join(dir, "x86", "ddnn-device");
  // Valgrind has no AVX-512: callgrind counts the same program built 8 lanes wide (AVX2).
  await writeGenerated(generateC(bundle), join(dir, "x86-avx2"));
  await run("nice", [
    "make",
    "-s",
    "-C",
    join(dir, "x86-avx2"),
    "ARCH_FLAGS=-march=native -mno-avx512f",
  ]);
  const counted = join(dir, "x86-avx2", "ddnn-device");
  const idx = await readIdx(images);
  const per = bundle.manifest.input.shape.reduce((a, b) => a * b, 1);
  const x = preprocess(bundle.manifest.input, idx.data.subarray(0, per), 1);
  const [native] = await openStages(bundle, { only: [0], backend: "native", intraOpThreads: 1 });
  const [wasm] = await openStages(bundle, { only: [0], backend: "wasm", intraOpThreads: 1 });
  const times = { c: [] as number[], node: [] as number[], wasm: [] as number[] };
  try {
    for (let r = 0; r < rounds; r++) {
      const order =
        r % 2 === 0 ? (["c", "node", "wasm"] as const) : (["wasm", "node", "c"] as const);
      for (const engine of order) {
        if (engine === "c") times.c.push(await cPerSample(program, samples));
        else if (engine === "node")
          times.node.push(await ortPerSample(native!, x, bundle.manifest.input.shape, samples));
        else
          times.wasm.push(
            await ortPerSample(wasm!, x, bundle.manifest.input.shape, Math.ceil(samples / 4)),
          );
      }
    }
  } finally {
    await native?.session.release();
    await wasm?.session.release();
  }
  const packed = await armFootprint(bundle, true, join(dir, "arm-packed"));
  const unpacked = await armFootprint(bundle, false, join(dir, "arm-unpacked"));
  return {
    bundle: name,
    cUs: median(times.c),
    nodeUs: median(times.node),
    wasmUs: median(times.wasm),
    cInstructions: values["no-callgrind"] ? null : await cInstructions(counted),
    wasmInstructions: values["callgrind-wasm"]
      ? await wasmInstructions(join(root, "models", name), bundle.manifest.input.shape)
      : null,
    packed,
    unpacked,
    packedLayers: generateC(bundle).report.packed.length,
  };
}

const kib = (b: number) => `${(b / 1024).toFixed(1)} KiB`;

async function main(): Promise<number> {
  const rows: Row[] = [];
  try {
    for (const name of values.bundles.split(",")) rows.push(await benchBundle(name.trim()));
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const vectors = await hostVectors();
  console.log(
    `device stage, batch 1, one thread, median of ${rounds} rounds of ${samples} samples (wasm: ${Math.ceil(samples / 4)}); us per sample, wall clock`,
  );
  console.log(
    `C: the generated Makefile's build for this machine (gcc -O3 -march=native: ${vectors}); load average ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}\n`,
  );
  console.log(
    renderTable(
      [
        "bundle",
        "C",
        "onnxruntime-node",
        "onnxruntime-web (wasm)",
        "node / C",
        "wasm / C",
        "C instr/sample (AVX2)",
        "wasm instr/sample",
      ],
      rows.map((r) => [
        r.bundle,
        r.cUs.toFixed(1),
        r.nodeUs.toFixed(1),
        r.wasmUs.toFixed(1),
        ratio(r.nodeUs / r.cUs),
        ratio(r.wasmUs / r.cUs),
        r.cInstructions === null ? "-" : `${(r.cInstructions / 1e6).toFixed(2)} M`,
        r.wasmInstructions === null ? "-" : `${(r.wasmInstructions / 1e6).toFixed(2)} M`,
      ]),
    ),
  );
  console.log(
    "\nfootprint of the model and layer library for 32-bit ARM (arm-linux-gnueabihf-gcc -O3, baseline ISA, objects only):" +
      " flash = code + weights and constants; RAM = activations, buffers\n",
  );
  console.log(
    renderTable(
      ["bundle", "bit-packing", "code", "weights + constants", "flash", "RAM"],
      rows.flatMap((r) =>
        (
          [
            ["on", r.packed],
            ["off", r.unpacked],
          ] as const
        ).map(([on, f]) => [
          r.bundle,
          r.packedLayers === 0 ? `${on} (no binarized layer)` : on,
          kib(f.text),
          kib(f.rodata + f.data),
          kib(f.text + f.rodata + f.data),
          kib(f.data + f.bss),
        ]),
      ),
    ),
  );
  console.log("");
  const code = printGoals(
    rows.flatMap((r) => [
      {
        name: `${r.bundle}: C no slower than onnxruntime-node at batch 1`,
        met: r.cUs <= r.nodeUs,
        detail: `node / C ${ratio(r.nodeUs / r.cUs)}`,
      },
      {
        name: `${r.bundle}: C at least 3x faster than onnxruntime-web (wasm)`,
        met: r.wasmUs >= 3 * r.cUs,
        detail: `wasm / C ${ratio(r.wasmUs / r.cUs)}`,
      },
    ]),
  );
  console.log(
    JSON.stringify({
      bench: "codegen",
      samples,
      rounds,
      vectors,
      loadavg: loadavg(),
      rows: rows.map((r) => ({
        ...r,
        cUs: round(r.cUs, 2),
        nodeUs: round(r.nodeUs, 2),
        wasmUs: round(r.wasmUs, 2),
        nodeOverC: round(r.nodeUs / r.cUs, 3),
        wasmOverC: round(r.wasmUs / r.cUs, 3),
      })),
    }),
  );
  return code;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error(err);
    process.exitCode = 2;
  },
);
