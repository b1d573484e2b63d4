/** `ddnn codegen c`: a bundle's device stage as a standalone C99 program (see docs/codegen.md). */
import { parseArgs } from "node:util";
import { type CodegenReport, generateC, writeGenerated } from "../codegen/generate.js";
import { readBundle } from "../core/bundle/read.js";
import { ConfigError } from "../core/config.js";

export const codegenHelp = `ddnn codegen: generate a bundle stage as a standalone C99 device program

Usage: ddnn codegen c --bundle DIR|FILE.tar.gz --out DIR [--stage NAME] [--no-pack] [--target c|opencl]

Writes into DIR the stage as C (dev_model_infer.c/.h: weights as const arrays, static buffers,
the layers as straight-line calls), the layer library (dnn_c_lib), the tool library (tool_lib:
preprocessing, the exit rule, idx files), the program ddnn-device and a Makefile, and prints
what it generated. "make -C DIR" builds ddnn-device; "DIR/ddnn-device --eval IMAGES LABELS
--json" prints the stage's exit table.

  --bundle PATH   bundle directory or .tar.gz
  --stage NAME    the stage to generate (default: the first, the device's)
  --out DIR       folder to write (created when missing; files in it are replaced)
  --no-pack       keep binarized weights as floats instead of 1 bit per weight
  --target T      c (default), or opencl: convolutions and matrix products as OpenCL 1.2
                  kernels (host code in C; make links -lOpenCL)
  --json          print the report (codegen.json) instead of a summary
`;

const options = {
  bundle: { type: "string" },
  stage: { type: "string" },
  out: { type: "string" },
  "no-pack": { type: "boolean" },
  target: { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

export async function runCodegen(
  argv: readonly string[],
  out: (text: string) => void,
): Promise<number> {
  const [target, ...rest] = argv;
  if (target === undefined || target === "--help" || target === "-h" || target === "help") {
    out(codegenHelp);
    return target === undefined ? 2 : 0;
  }
  if (target !== "c")
    throw new ConfigError(`codegen: unknown target "${target}" (try: ddnn codegen c --help)`);
  let flags: ReturnType<typeof parseArgs<{ args: string[]; options: typeof options }>>["values"];
  try {
    flags = parseArgs({ args: [...rest], options, allowPositionals: false }).values;
  } catch (err) {
    throw new ConfigError(`codegen c: ${(err as Error).message}`);
  }
  if (flags.help) {
    out(codegenHelp);
    return 0;
  }
  if (flags.bundle === undefined) throw new ConfigError("codegen c: --bundle is required");
  if (flags.out === undefined) throw new ConfigError("codegen c: --out is required");
  const kind = flags.target ?? "c";
  if (kind !== "c" && kind !== "opencl")
    throw new ConfigError(`codegen c: --target must be c or opencl (got "${kind}")`);
  const bundle = await readBundle(flags.bundle);
  const generated = generateC(bundle, {
    ...(flags.stage === undefined ? {} : { stage: flags.stage }),
    pack: !flags["no-pack"],
    target: kind,
  });
  await writeGenerated(generated, flags.out);
  out(flags.json ? JSON.stringify(generated.report) : summary(generated.report, flags.out));
  return 0;
}

function kib(bytes: number): string {
  return `${(bytes / 1024).toFixed(1)} KiB`;
}

/** What a user reads after generating: layers, packing, memory. */
export function summary(r: CodegenReport, out: string): string {
  const lines = [
    `wrote ${out}: ${r.bundle}, stage ${r.stage}, ${r.layers.length} layers (${r.opTypes.join(", ")})`,
  ];
  for (const p of r.packed) {
    lines.push(
      `  bit-packed ${p.op} ${p.layer}: ${p.weights} weights, ${p.bytesBefore} -> ${p.bytesAfter} bytes (${(p.bytesBefore / p.bytesAfter).toFixed(1)}x)`,
    );
  }
  if (r.packed.length === 0) lines.push("  no binarized layer to bit-pack");
  lines.push(
    `  weights ${r.weightBytes} bytes (${kib(r.weightBytes)})` +
      (r.weightBytes !== r.weightBytesUnpacked
        ? `, ${r.weightBytesUnpacked} bytes (${kib(r.weightBytesUnpacked)}) without bit-packing`
        : ""),
    `  activations ${r.arenaBytes} bytes in one static arena; features ${r.featuresShape ? `[${r.featuresShape.join(", ")}]` : "none (last stage)"}`,
    `build: make -C ${out}    run: ${out}/ddnn-device --eval IMAGES LABELS --json`,
  );
  return lines.join("\n");
}
