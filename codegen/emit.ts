/**
 * Writes the model as C99: dev_model_infer.h (sizes and the stage's description) and
 * dev_model_infer.c (weights as const arrays, one static arena, and the layers as straight-line
 * calls into dnn_c_lib). Output depends only on the graph and the options: same bundle, same bytes.
 */
import type { ConvLayer, Layer, LoweredGraph, PoolLayer, Value } from "./graph.js";
import { binaryMagnitudes, signBits } from "./pack.js";
import { layerInputs, planMemory } from "./plan.js";

export interface StageDescription {
  readonly bundleName: string;
  readonly bundleVersion: string;
  readonly digest: string;
  readonly stageName: string;
  readonly stageIndex: number;
  readonly nextStageName: string | undefined;
  /** Every stage's name, in order (replies name the stage that answered by its index). */
  readonly stageNames: readonly string[];
  readonly onnxFile: string;
  readonly onnxSha256: string;
  readonly inputShape: readonly number[];
  readonly scale: number;
  readonly mean: readonly number[];
  readonly std: readonly number[];
  readonly labels: readonly string[];
  readonly threshold: number | undefined;
  readonly features: string | undefined;
  readonly logits: string;
}

export interface PackedLayer {
  readonly layer: string;
  readonly op: "conv" | "gemm";
  readonly weights: number;
  readonly bytesBefore: number;
  readonly bytesAfter: number;
}

export interface EmitReport {
  /** Layers as the generated code runs them (fused nodes joined with " + "). */
  readonly layers: readonly { readonly op: string; readonly nodes: string }[];
  readonly packed: readonly PackedLayer[];
  /** Bytes of all const data (weights, biases, packed bits), with and without bit-packing. */
  readonly weightBytes: number;
  readonly weightBytesUnpacked: number;
  readonly arenaBytes: number;
  /** Static bytes the convolutions use besides the arena (padded input, decoded weights or sign groups). */
  readonly scratchBytes: number;
  readonly featuresShape: readonly number[] | undefined;
}

export interface EmitOptions {
  /** Store binary weights as bits (default true). */
  readonly pack?: boolean;
  /** "opencl": convolutions and matrix products as OpenCL kernels (dnn_cl_lib). Default "c". */
  readonly target?: "c" | "opencl";
}

/** Shortest decimal that reads back as the same float32, as a C float literal. */
export function floatLiteral(v: number): string {
  if (Number.isNaN(v)) return "NAN";
  if (v === Number.POSITIVE_INFINITY) return "INFINITY";
  if (v === Number.NEGATIVE_INFINITY) return "-INFINITY";
  if (v === 0) return Object.is(v, -0) ? "-0.0f" : "0.0f";
  let text = "";
  for (let p = 1; p <= 9; p++) {
    text = v.toPrecision(p);
    if (Math.fround(Number(text)) === v) break;
  }
  if (text.includes("e")) {
    const [mantissa, exponent] = text.split("e") as [string, string];
    text = `${mantissa.includes(".") ? mantissa : `${mantissa}.0`}e${exponent}`;
  } else if (!text.includes(".")) text = `${text}.0`;
  return `${text}f`;
}

/** A double for C, exactly (17 significant digits when needed). */
function doubleLiteral(v: number): string {
  for (let p = 1; p <= 17; p++) {
    const t = v.toPrecision(p);
    if (Number(t) === v) return t.includes(".") || t.includes("e") ? t : `${t}.0`;
  }
  return String(v);
}

/** A C comment's text: no comment terminators, no control characters. */
function commentText(s: string): string {
  let out = "";
  for (const ch of s.replace(/\*\//g, "* /")) {
    const code = ch.codePointAt(0)!;
    out += code < 0x20 || code === 0x7f ? "?" : ch;
  }
  return out;
}

/** A C string literal. */
export function cString(s: string): string {
  let out = '"';
  for (const b of new TextEncoder().encode(s)) {
    if (b === 0x22) out += '\\"';
    else if (b === 0x5c) out += "\\\\";
    else if (b >= 0x20 && b < 0x7f && b !== 0x3f) out += String.fromCharCode(b);
    else out += `\\${b.toString(8).padStart(3, "0")}`;
  }
  return `${out}"`;
}

function floatArray(name: string, data: Float32Array, comment: string): string {
  const lines: string[] = [];
  for (let i = 0; i < data.length; i += 8) {
    lines.push(`    ${Array.from(data.subarray(i, i + 8), floatLiteral).join(", ")},`);
  }
  return `/* ${commentText(comment)} */\nstatic const float ${name}[${Math.max(1, data.length)}] = {\n${lines.join("\n") || "    0.0f,"}\n};\n`;
}

function byteArray(name: string, data: Uint8Array, comment: string): string {
  const lines: string[] = [];
  for (let i = 0; i < data.length; i += 16) {
    lines.push(
      `    ${Array.from(data.subarray(i, i + 16), (b) => `0x${b.toString(16).padStart(2, "0")}`).join(", ")},`,
    );
  }
  return `/* ${commentText(comment)} */\nstatic const uint8_t ${name}[${data.length}] = {\n${lines.join("\n")}\n};\n`;
}

const shapeText = (s: readonly number[]) => `[${s.join(", ")}]`;

function poolStruct(name: string, layer: PoolLayer): string {
  return `static const dnn_pool_t ${name} = {\n    .c = ${layer.c}, .h = ${layer.h}, .w = ${layer.w}, .oh = ${layer.oh}, .ow = ${layer.ow},\n    .kh = ${layer.kh}, .kw = ${layer.kw}, .sh = ${layer.sh}, .sw = ${layer.sw}, .dh = ${layer.dh}, .dw = ${layer.dw},\n    .pt = ${layer.pt}, .pl = ${layer.pl}, .pb = ${layer.pb}, .pr = ${layer.pr}, .count_include_pad = ${layer.countIncludePad ? 1 : 0},\n};\n`;
}

/** A convolution with the max pooling after it run in the same pass (its output is the pool's). */
interface PooledConv extends ConvLayer {
  readonly pool: PoolLayer;
}

/** How the C target runs a convolution: its binary magnitudes (bit-packed) and its kernel. */
function convKernel(layer: ConvLayer, options: EmitOptions) {
  const taps = (layer.c / layer.group) * layer.kh * layer.kw;
  const opencl = options.target === "opencl";
  const alpha =
    options.pack === false
      ? undefined
      : binaryMagnitudes(layer.weights, layer.m, (i) => Math.floor(i / taps));
  // Horizontal stride 1: the row kernels (a vector of output pixels along a row); the float form
  // wants blocks of 8 output channels, as the 4-pixel block8 kernel (any stride) does.
  const block8 = !opencl && (layer.m / layer.group) % 8 === 0;
  const rows = !opencl && layer.sw === 1 && (alpha !== undefined || block8);
  return { taps, alpha, block8, rows };
}

/**
 * Joins each row-kernel convolution with a max pooling that alone reads its output, when the
 * pooling's windows lie inside that output (no padding, no dilation): the convolution's output
 * is then never stored (it needs no arena space) and the pooling costs no pass of its own.
 */
function fuseConvMaxPool(graph: LoweredGraph, options: EmitOptions): LoweredGraph {
  if (options.target === "opencl") return graph;
  const storage = (name: string) => {
    const v = graph.values.get(name);
    return v?.kind === "act" ? v.storage : undefined;
  };
  const readers = new Map<string, number>();
  for (const layer of graph.layers)
    for (const i of layerInputs(layer)) {
      const s = storage(i);
      if (s) readers.set(s, (readers.get(s) ?? 0) + 1);
    }
  for (const o of graph.outputs) {
    const s = storage(o);
    if (s) readers.set(s, (readers.get(s) ?? 0) + 1);
  }
  const layers: Layer[] = [];
  for (let i = 0; i < graph.layers.length; i++) {
    const layer = graph.layers[i]!;
    const next = graph.layers[i + 1];
    if (
      layer.op === "conv" &&
      next?.op === "maxpool" &&
      next.x === layer.y &&
      readers.get(storage(layer.y) ?? "") === 1 &&
      convKernel(layer, options).rows &&
      next.pt === 0 &&
      next.pl === 0 &&
      next.pb === 0 &&
      next.pr === 0 &&
      next.dh === 1 &&
      next.dw === 1 &&
      (next.oh - 1) * next.sh + next.kh <= next.h &&
      (next.ow - 1) * next.sw + next.kw <= next.w
    ) {
      const pooled: PooledConv = {
        ...layer,
        nodes: [...layer.nodes, ...next.nodes],
        y: next.y,
        pool: next,
      };
      layers.push(pooled);
      i++;
    } else layers.push(layer);
  }
  return { ...graph, layers };
}

export function emitModel(
  lowered: LoweredGraph,
  stage: StageDescription,
  options: EmitOptions = {},
): { header: string; source: string; report: EmitReport } {
  const graph = fuseConvMaxPool(lowered, options);
  const plan = planMemory(graph);
  const consts: string[] = [];
  const structs: string[] = [];
  const calls: string[] = [];
  const packed: PackedLayer[] = [];
  const layerReport: { op: string; nodes: string }[] = [];
  let weightBytes = 0;
  let weightBytesUnpacked = 0;
  /** Floats a bit-packed block of 8 output channels decodes into (0: no such layer). */
  let scratchFloats = 0;
  /** Floats of the zero-padded input copy of the largest blocked convolution. */
  let paddedFloats = 0;
  /** Entries of the row kernels' decoded sign groups (bit-packed convolutions, 2 bytes each). */
  let pickEntries = 0;
  const picks: string[] = [];
  const pickDecodes: string[] = [];
  /** Floats of the rows a fused max pooling reduces its windows into. */
  let poolRowFloats = 0;
  const constNames = new Map<string, string>();

  const addFloats = (name: string, data: Float32Array, comment: string) => {
    consts.push(floatArray(name, data, comment));
    weightBytes += 4 * data.length;
    weightBytesUnpacked += 4 * data.length;
    return name;
  };

  /** A C expression for a value's data. */
  const ref = (name: string, writable = false): string => {
    const v = graph.values.get(name) as Value | undefined;
    if (!v) throw new Error(`codegen: unknown value ${name}`);
    if (v.kind === "input") {
      if (writable) throw new Error("codegen: a layer writes the stage input");
      return "input";
    }
    if (v.kind === "const") {
      let c = constNames.get(v.name);
      if (!c) {
        c = `const_${constNames.size}`;
        constNames.set(v.name, c);
        addFloats(c, v.data, `constant "${v.name}" ${shapeText(v.shape)}`);
      }
      return c;
    }
    const offset = plan.offsets.get(v.storage)!;
    return offset === 0 ? "arena" : `arena + ${offset}`;
  };

  graph.layers.forEach((layer, index) => {
    const id = `L${index}`;
    const nodes = layer.nodes.map((n) => n || "(unnamed)").join(" + ");
    const op = "pool" in layer ? "conv+maxpool" : layer.op;
    layerReport.push({ op, nodes });
    const inShapes = layerInputs(layer).map((i) => shapeText(graph.values.get(i)!.shape));
    const outShape = shapeText(graph.values.get(layer.y)!.shape);
    calls.push(`    /* ${id} ${commentText(nodes)}: ${op} ${inShapes.join(" ")} -> ${outShape} */`);
    calls.push(`    ${emitLayer(layer, id)}`);
  });

  function emitLayer(layer: Layer, id: string): string {
    const x = () => ref(layerInputs(layer)[0]!);
    const y = ref(layer.y, true);
    switch (layer.op) {
      case "conv": {
        const bias = layer.bias
          ? addFloats(`${id}_bias`, layer.bias, `${id} bias [${layer.m}]`)
          : "NULL";
        const cg = layer.c / layer.group;
        const { taps, alpha, block8, rows } = convKernel(layer, options);
        const shape = `[${layer.m}][${cg}][${layer.kh}][${layer.kw}]`;
        const opencl = options.target === "opencl";
        const pool = "pool" in layer ? (layer as PooledConv).pool : undefined;
        // The padded plane the row and block8 kernels read: the input with its padding, and the
        // rows and columns the taps reach (block8: up to the end of the last 4-pixel tile).
        const hp = Math.max(
          layer.h + layer.pt,
          (layer.oh - 1) * layer.sh + (layer.kh - 1) * layer.dh + 1,
        );
        const tileWidth = rows ? layer.ow : Math.ceil(layer.ow / 4) * 4;
        const wp = Math.max(
          layer.w + layer.pl,
          (tileWidth - 1) * layer.sw + (layer.kw - 1) * layer.dw + 1,
        );
        const padded = rows || block8;
        if (padded) paddedFloats = Math.max(paddedFloats, layer.c * hp * wp);
        structs.push(
          `static const dnn_conv_t ${id} = {\n    .c = ${layer.c}, .h = ${layer.h}, .w = ${layer.w}, .m = ${layer.m}, .oh = ${layer.oh}, .ow = ${layer.ow},\n    .kh = ${layer.kh}, .kw = ${layer.kw}, .sh = ${layer.sh}, .sw = ${layer.sw}, .dh = ${layer.dh}, .dw = ${layer.dw},\n    .pt = ${layer.pt}, .pl = ${layer.pl}, .hp = ${padded ? hp : 0}, .wp = ${padded ? wp : 0}, .group = ${layer.group}, .relu = ${layer.relu ? 1 : 0},\n};\n`,
        );
        // A fused max pooling: its description, and the rows its windows reduce into.
        let poolArgs = "";
        let suffix = "";
        if (pool) {
          structs.push(poolStruct(`${id}_pool`, pool));
          const channels = alpha ? Math.min(32, layer.m / layer.group) : 8;
          poolRowFloats = Math.max(poolRowFloats, channels * (layer.ow + 16));
          poolArgs = `&${id}_pool, `;
          suffix = "_maxpool";
        }
        const rowsArg = pool ? "pool_rows, " : "";
        const where = block8
          ? (i: number) => {
              const m = Math.floor(i / taps);
              return (Math.floor(m / 8) * taps + (i % taps)) * 8 + (m % 8);
            }
          : (i: number) => i;
        const kernel = opencl
          ? "dnn_cl_conv2d"
          : rows
            ? "dnn_conv2d_rows"
            : block8
              ? "dnn_conv2d_block8"
              : "dnn_conv2d";
        const bitsKernel = rows ? `${kernel}_bits${suffix}` : `${kernel}_bits`;
        if (alpha) {
          if (rows) {
            const rowBytes = Math.ceil(taps / 8);
            const bits = signBits(
              layer.weights,
              layer.m * rowBytes,
              (i) => Math.floor(i / taps) * rowBytes * 8 + (i % taps),
            );
            emitPacked(
              id,
              layer,
              bits,
              alpha,
              `${id} weights ${shape} as sign bits, ${rowBytes} bytes per output channel (bit i = tap i > 0)`,
            );
            const entries = layer.m * Math.ceil(taps / 4);
            pickEntries += entries;
            picks.push(`static uint16_t ${id}_picks[${entries}];`);
            pickDecodes.push(`dnn_conv2d_rows_picks(&${id}, ${id}_bits, ${id}_picks);`);
            return `${bitsKernel}(&${id}, ${poolArgs}${x()}, ${id}_alpha, ${bias}, ${id}_picks, padded, ${rowsArg}${y});`;
          }
          const bits = signBits(layer.weights, Math.ceil(layer.weights.length / 8), where);
          emitPacked(
            id,
            layer,
            bits,
            alpha,
            block8
              ? `${id} weights ${shape} as sign bits, one byte per tap of 8 output channels`
              : `${id} weights ${shape} as sign bits, bit i = weight i > 0`,
          );
          if (block8) scratchFloats = Math.max(scratchFloats, taps * 8);
          const scratch = block8 ? "scratch, padded, " : "";
          return `${kernel}_bits(&${id}, ${x()}, ${id}_bits, ${id}_alpha, ${bias}, ${scratch}${y});`;
        }
        const weights = new Float32Array(layer.weights.length);
        for (let i = 0; i < weights.length; i++) weights[where(i)] = layer.weights[i]!;
        addFloats(
          `${id}_weights`,
          weights,
          block8
            ? `${id} weights ${shape} in blocks [m / 8][c][kh][kw][8]`
            : `${id} weights ${shape}`,
        );
        return `${kernel}${suffix}(&${id}, ${poolArgs}${x()}, ${id}_weights, ${bias}, ${padded ? "padded, " : ""}${rowsArg}${y});`;
      }
      case "gemm": {
        structs.push(
          `static const dnn_gemm_t ${id} = {\n    .rows = ${layer.rows}, .k = ${layer.k}, .n = ${layer.n}, .row_stride = ${layer.rowStride}, .k_stride = ${layer.kStride},\n    .alpha = ${floatLiteral(Math.fround(layer.alpha))}, .relu = ${layer.relu ? 1 : 0},\n};\n`,
        );
        const bias = layer.bias
          ? addFloats(`${id}_bias`, layer.bias, `${id} bias [${layer.rows}][${layer.n}]`)
          : "NULL";
        const { k, n } = layer;
        const gemmKernel = options.target === "opencl" ? "dnn_cl_gemm" : "dnn_gemm";
        // The lowered weights are [k][n]; the kernel reads row j = output j, [n][k].
        const where = (i: number) => (i % n) * k + Math.floor(i / n);
        const alpha =
          options.pack === false ? undefined : binaryMagnitudes(layer.weights, n, (i) => i % n);
        if (alpha) {
          const rowBytes = Math.ceil(k / 8);
          const bits = signBits(
            layer.weights,
            n * rowBytes,
            (i) => (i % n) * rowBytes * 8 + Math.floor(i / n),
          );
          emitPacked(
            id,
            layer,
            bits,
            alpha,
            `${id} weights [${n}][${k}] as sign bits, ${rowBytes} bytes per output`,
          );
          return `${gemmKernel}_bits(&${id}, ${x()}, ${id}_bits, ${id}_alpha, ${bias}, ${y});`;
        }
        const weights = new Float32Array(layer.weights.length);
        for (let i = 0; i < weights.length; i++) weights[where(i)] = layer.weights[i]!;
        addFloats(`${id}_weights`, weights, `${id} weights [${n}][${k}]`);
        return `${gemmKernel}(&${id}, ${x()}, ${id}_weights, ${bias}, ${y});`;
      }
      case "maxpool":
      case "avgpool":
        structs.push(poolStruct(id, layer));
        return `dnn_${layer.op}2d(&${id}, ${x()}, ${y});`;
      case "globalavgpool":
        return `dnn_global_avgpool(${layer.c}, ${layer.plane}, ${x()}, ${y});`;
      case "affine": {
        const scale = addFloats(`${id}_scale`, layer.scale, `${id} scale [${layer.c}]`);
        const shift = addFloats(`${id}_shift`, layer.shift, `${id} shift [${layer.c}]`);
        return `dnn_channel_affine(${layer.c}, ${layer.inner}, ${scale}, ${shift}, ${layer.relu ? 1 : 0}, ${x()}, ${y});`;
      }
      case "relu":
        return `dnn_relu(${layer.size}, ${x()}, ${y});`;
      case "sigmoid":
        return `dnn_sigmoid(${layer.size}, ${x()}, ${y});`;
      case "clip":
        return `dnn_clip(${layer.size}, ${floatLiteral(Math.fround(layer.lo))}, ${floatLiteral(Math.fround(layer.hi))}, ${x()}, ${y});`;
      case "binary": {
        const op = `DNN_${layer.fn.toUpperCase()}`;
        const a = ref(layer.a);
        const b = ref(layer.b);
        if (layer.aStrides === undefined || layer.bStrides === undefined) {
          const n = layer.shape.reduce((p, q) => p * q, 1);
          return `dnn_binary(${op}, ${n}, ${a}, ${b}, ${layer.relu ? 1 : 0}, ${y});`;
        }
        const list = (v: readonly number[]) => `{${v.join(", ")}}`;
        structs.push(
          `static const dnn_broadcast_t ${id} = {\n    .op = ${op}, .rank = ${layer.shape.length}, .shape = ${list(layer.shape.length ? layer.shape : [1])},\n    .a_stride = ${list(layer.aStrides.length ? layer.aStrides : [0])}, .b_stride = ${list(layer.bStrides.length ? layer.bStrides : [0])}, .relu = ${layer.relu ? 1 : 0},\n};\n`,
        );
        return `dnn_binary_broadcast(&${id}, ${a}, ${b}, ${y});`;
      }
      case "concat": {
        let offset = 0;
        const parts = layer.inputs.map((input, i) => {
          const inner = layer.inners[i]!;
          const call = `dnn_concat_part(${layer.outer}, ${inner}, ${layer.innerOut}, ${offset}, ${ref(input)}, ${y});`;
          offset += inner;
          return call;
        });
        return parts.join("\n    ");
      }
    }
  }

  function emitPacked(
    id: string,
    layer: Layer & { weights: Float32Array },
    bits: Uint8Array,
    alpha: Float32Array,
    what: string,
  ) {
    consts.push(byteArray(`${id}_bits`, bits, what));
    consts.push(floatArray(`${id}_alpha`, alpha, `${id} magnitude per output channel`));
    const after = bits.length + 4 * alpha.length;
    weightBytes += after;
    weightBytesUnpacked += 4 * layer.weights.length;
    // The layer's own nodes (a fused max pooling is not part of what was packed).
    const own = "pool" in layer ? (layer as PooledConv).pool.nodes.length : 0;
    packed.push({
      layer: layer.nodes.slice(0, layer.nodes.length - own).join(" + "),
      op: layer.op as "conv" | "gemm",
      weights: layer.weights.length,
      bytesBefore: 4 * layer.weights.length,
      bytesAfter: after,
    });
  }

  const outputCopies: string[] = [];
  const featuresValue = stage.features === undefined ? undefined : graph.values.get(stage.features);
  const logitsValue = graph.values.get(stage.logits)!;
  const size = (v: Value) => v.shape.reduce((a, b) => a * b, 1);
  if (featuresValue)
    outputCopies.push(
      `    memcpy(features, ${ref(featuresValue.name)}, sizeof(float) * ${size(featuresValue)});`,
    );
  else outputCopies.push("    (void)features;");
  outputCopies.push(
    `    memcpy(logits, ${ref(logitsValue.name)}, sizeof(float) * ${size(logitsValue)});`,
  );

  const inputSize = stage.inputShape.reduce((a, b) => a * b, 1);
  const classes = stage.labels.length;
  if (size(logitsValue) !== classes)
    throw new Error(`codegen: logits hold ${size(logitsValue)} values for ${classes} labels`);
  const featuresShape = featuresValue?.shape.slice(1);
  const featuresSize = featuresValue ? size(featuresValue) : 0;
  const channels = stage.inputShape[0] ?? 1;
  const perChannel = (v: readonly number[]) =>
    Array.from({ length: channels }, (_, c) =>
      floatLiteral(Math.fround(v[v.length === 1 ? 0 : c] ?? 0)),
    );
  const dims = (s: readonly number[]) => `{${(s.length ? s : [0]).join(", ")}}`;

  const banner = [
    "/*",
    ` * Generated by \`ddnn codegen c\` from bundle ${commentText(stage.bundleName)} ${commentText(stage.bundleVersion)}, stage "${commentText(stage.stageName)}"`,
    ` * (${commentText(stage.onnxFile)}, sha256 ${stage.onnxSha256}). Regenerate instead of editing.`,
    " */",
  ].join("\n");

  const header = `${banner}
#ifndef DEV_MODEL_INFER_H
#define DEV_MODEL_INFER_H

#include "tool_lib.h"

#define DEV_MODEL_INPUT_SIZE ${inputSize}
#define DEV_MODEL_FEATURES_SIZE ${Math.max(1, featuresSize)}
#define DEV_MODEL_HAS_FEATURES ${featuresValue ? 1 : 0}
#define DEV_MODEL_CLASSES ${classes}
#define DEV_MODEL_ARENA_FLOATS ${plan.arenaFloats}

/* The bundle, the stage, its preprocessing and its exit, as ddnn.json says. */
extern const ddnn_stage_info dev_model_info;

/*
 * Runs the stage on one sample: input ${shapeText(stage.inputShape)} (preprocessed), features ${featuresShape ? shapeText(featuresShape) : "(none: the last stage)"},
 * logits [${classes}]. Uses only static memory; not reentrant.
 */
void dev_model_infer(const float *input, float *features, float *logits);

#endif
`;

  const labelLines = stage.labels.map((l) => `    ${cString(l)},`).join("\n");
  const source = `${banner}
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "dev_model_infer.h"
#include "dnn_c_lib.h"
${options.target === "opencl" ? '#include "dnn_cl_lib.h"\n' : ""}
static const float input_mean[${channels}] = {${perChannel(stage.mean).join(", ")}};
static const float input_std[${channels}] = {${perChannel(stage.std).join(", ")}};
static const char *const labels[${classes}] = {
${labelLines}
};

static const char *const stage_names[${stage.stageNames.length}] = {${stage.stageNames.map(cString).join(", ")}};

const ddnn_stage_info dev_model_info = {
    .bundle_name = ${cString(stage.bundleName)},
    .bundle_version = ${cString(stage.bundleVersion)},
    .digest = ${cString(stage.digest)},
    .stage_name = ${cString(stage.stageName)},
    .stage_index = ${stage.stageIndex},
    .next_stage_name = ${stage.nextStageName === undefined ? "NULL" : cString(stage.nextStageName)},
    .stage_count = ${stage.stageNames.length},
    .stage_names = stage_names,
    .input_rank = ${stage.inputShape.length},
    .input_shape = ${dims(stage.inputShape)},
    .input_size = ${inputSize},
    .input_scale = ${floatLiteral(Math.fround(stage.scale))},
    .channels = ${channels},
    .mean = input_mean,
    .std = input_std,
    .features_rank = ${featuresShape?.length ?? 0},
    .features_shape = ${dims(featuresShape ?? [])},
    .features_size = ${featuresSize},
    .classes = ${classes},
    .labels = labels,
    .has_exit = ${stage.threshold === undefined ? 0 : 1},
    .threshold = ${stage.threshold === undefined ? "1.0" : doubleLiteral(stage.threshold)},
};

${consts.join("\n")}
${structs.join("\n")}
/* Every activation lives here; offsets were planned at generation time. */
static float arena[${Math.max(1, plan.arenaFloats)}];
${scratchFloats ? `\n/* The weights of one block of 8 output channels of a bit-packed convolution, decoded. */\nstatic float scratch[${scratchFloats}];\n` : ""}${paddedFloats ? `\n/* A convolution's input with its padding as zeros (the blocked and row kernels read it unchecked; a row's last vector reads up to DNN_MAX_LANES floats past it). */\nstatic float padded[${paddedFloats} + DNN_MAX_LANES];\n` : ""}${picks.length ? `\n/* Per output channel and group of 4 taps of a bit-packed convolution: the signed sum its bits pick (decoded at the first call). */\n${picks.join("\n")}\nstatic int picks_decoded;\n` : ""}${poolRowFloats ? `\n/* A convolution's output rows, reduced down the windows of the max pooling fused after it. */\nstatic float pool_rows[${poolRowFloats}];\n` : ""}
void dev_model_infer(const float *input, float *features, float *logits)
{
${pickDecodes.length ? `    if (!picks_decoded) {\n${pickDecodes.map((d) => `        ${d}\n`).join("")}        picks_decoded = 1;\n    }\n` : ""}${calls.join("\n")}
${outputCopies.join("\n")}
}
`;
  return {
    header,
    source,
    report: {
      layers: layerReport,
      packed,
      weightBytes,
      weightBytesUnpacked,
      arenaBytes: 4 * plan.arenaFloats,
      scratchBytes:
        4 * (scratchFloats + (paddedFloats ? paddedFloats + 16 : 0) + poolRowFloats) +
        2 * pickEntries,
      featuresShape,
    },
  };
}
