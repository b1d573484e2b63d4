/**
 * `ddnn codegen c`: one stage of a bundle as a standalone C99 program. The sources are the
 * generated model (dev_model_infer.c/.h), the layer library (dnn_c_lib), the tool library
 * (tool_lib: preprocessing, exit rule, idx files), the device program (ddnn_device.c) and a
 * Makefile; codegen.json reports the layers, the bit-packed weights and the memory they take.
 */
import { readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { bundleFileLabel, type VerifiedBundle } from "../core/bundle/read.js";
import { ConfigError } from "../core/config.js";
import { type EmitReport, emitModel, type StageDescription } from "./emit.js";
import { type LoweredGraph, lowerGraph, type Shape } from "./graph.js";
import { OnnxFormatError, type OnnxModel, readOnnx } from "./onnx.js";

/** Library and program sources copied verbatim into every generated folder. */
export const RUNTIME_FILES = [
  "dnn_c_lib.h",
  "dnn_c_lib.c",
  "tool_lib.h",
  "tool_lib.c",
  "ddnn_device.c",
  "ddnn_mqtt.c",
] as const;

export interface GenerateOptions {
  /** Stage name (default: the first stage). */
  readonly stage?: string;
  /** Store binary weights bit-packed (default true). */
  readonly pack?: boolean;
}

export interface Generated {
  /** File name -> contents, in the order they are written. */
  readonly files: ReadonlyMap<string, string>;
  readonly report: CodegenReport;
}

export interface CodegenReport extends EmitReport {
  readonly bundle: string;
  readonly stage: string;
  readonly opTypes: readonly string[];
}

/** Where the C sources of the runtime are, from source (codegen/) or from dist/codegen/. */
function runtimeDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const dir of [join(here, "c"), join(here, "..", "..", "codegen", "c")]) {
    try {
      readFileSync(join(dir, "dnn_c_lib.h"));
      return dir;
    } catch {}
  }
  throw new Error(`codegen: cannot find the C runtime sources (codegen/c) from ${here}`);
}

function parseStage(bundle: VerifiedBundle, index: number): OnnxModel {
  const spec = bundle.manifest.stages[index]!;
  try {
    return readOnnx(bundle.stageBytes[index]!);
  } catch (err) {
    if (err instanceof OnnxFormatError)
      throw new ConfigError(`${bundleFileLabel(bundle, spec.file)}: ${err.message}`);
    throw err;
  }
}

function lowerStage(
  bundle: VerifiedBundle,
  index: number,
  inputShape: Shape | undefined,
): LoweredGraph {
  const spec = bundle.manifest.stages[index]!;
  const last = index === bundle.manifest.stages.length - 1;
  return lowerGraph(parseStage(bundle, index), {
    input: spec.input,
    inputShape,
    outputs: last || spec.features === undefined ? [spec.logits] : [spec.features, spec.logits],
    file: bundleFileLabel(bundle, spec.file),
  });
}

/** Per-sample input shape of stage `index`: the manifest's for stage 0, else the features before it. */
function stageInputShape(bundle: VerifiedBundle, index: number): Shape {
  let shape: Shape = bundle.manifest.input.shape;
  for (let k = 0; k < index; k++) {
    const spec = bundle.manifest.stages[k]!;
    const graph = lowerStage(bundle, k, shape);
    shape = graph.values.get(spec.features!)!.shape.slice(1);
  }
  return shape;
}

export function generateC(bundle: VerifiedBundle, options: GenerateOptions = {}): Generated {
  const { manifest } = bundle;
  const index =
    options.stage === undefined ? 0 : manifest.stages.findIndex((s) => s.name === options.stage);
  if (index < 0) {
    throw new ConfigError(
      `--stage: the bundle has no stage "${options.stage}" (its stages: ${manifest.stages.map((s) => s.name).join(", ")})`,
    );
  }
  const spec = manifest.stages[index]!;
  const last = index === manifest.stages.length - 1;
  const inputShape = stageInputShape(bundle, index);
  const graph = lowerStage(bundle, index, inputShape);
  const stage: StageDescription = {
    bundleName: manifest.name,
    bundleVersion: manifest.version,
    digest: bundle.digest,
    stageName: spec.name,
    stageIndex: index,
    nextStageName: last ? undefined : manifest.stages[index + 1]!.name,
    stageNames: manifest.stages.map((s) => s.name),
    onnxFile: spec.file,
    onnxSha256: spec.sha256,
    inputShape,
    scale: manifest.input.scale,
    mean: manifest.input.mean,
    std: manifest.input.std,
    labels: manifest.labels,
    threshold: last ? undefined : spec.exit?.threshold,
    features: last ? undefined : spec.features,
    logits: spec.logits,
  };
  if (!last && stage.threshold === undefined)
    throw new ConfigError(`ddnn.json stages[${index}] (${spec.name}) has no exit threshold`);
  const model = emitModel(graph, stage, { pack: options.pack !== false });
  const report: CodegenReport = {
    bundle: `${manifest.name} ${manifest.version}`,
    stage: spec.name,
    opTypes: graph.opTypes,
    ...model.report,
  };
  const files = new Map<string, string>();
  files.set("dev_model_infer.h", model.header);
  files.set("dev_model_infer.c", model.source);
  const dir = runtimeDir();
  for (const f of RUNTIME_FILES) files.set(f, readFileSync(join(dir, f), "utf8"));
  files.set("Makefile", makefile(stage));
  files.set("codegen.json", `${JSON.stringify(report, null, 2)}\n`);
  return { files, report };
}

function makefile(stage: StageDescription): string {
  const name = `${stage.bundleName} ${stage.bundleVersion}, stage ${stage.stageName}`.replace(
    /[^A-Za-z0-9 ._,-]/g,
    "_",
  );
  return `# Generated by \`ddnn codegen c\` for bundle ${name}.
#   make                    ddnn-device (zlib reads gzipped idx files)
#   make ZLIB=0             without zlib (plain idx files only)
#   make MQTT=1             with the MQTT side (ddnn-device --broker): libmosquitto, cJSON, zlib
#   make CC=arm-linux-gnueabihf-gcc LDFLAGS=-static ZLIB=0    a static 32-bit ARM program
# The model and the layer library need libc and libm only.

CC = gcc
CFLAGS = -std=c99 -Wall -Wextra -Werror -O2
LDFLAGS =
ZLIB = 1

MQTT = 0

DEFS =
LIBS = -lm
ifeq ($(ZLIB),1)
DEFS += -DDDNN_ZLIB
LIBS := -lz $(LIBS)
endif

MODEL_OBJS = dev_model_infer.o dnn_c_lib.o
OBJS = ddnn_device.o tool_lib.o $(MODEL_OBJS)
# MQTT=1: ddnn-device --broker offloads over MQTT (libmosquitto, cJSON; needs ZLIB=1).
ifeq ($(MQTT),1)
DEFS += -DDDNN_MQTT
OBJS += ddnn_mqtt.o
LIBS := -lmosquitto -lcjson $(LIBS)
endif
HEADERS = dev_model_infer.h dnn_c_lib.h tool_lib.h

all: ddnn-device

ddnn-device: $(OBJS)
\t$(CC) $(LDFLAGS) -o $@ $(OBJS) $(LIBS)

%.o: %.c $(HEADERS)
\t$(CC) $(CFLAGS) $(DEFS) -c $< -o $@

# The model alone, for linking into another program.
model: $(MODEL_OBJS)

clean:
\trm -f *.o ddnn-device

.PHONY: all model clean
`;
}

/** Writes the generated files into `out` (created when missing). */
export async function writeGenerated(generated: Generated, out: string): Promise<void> {
  await mkdir(out, { recursive: true });
  for (const [name, text] of generated.files) await writeFile(join(out, name), text);
}
