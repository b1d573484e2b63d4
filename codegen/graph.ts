/**
 * Lowers one stage's ONNX graph to a list of layers with static shapes for one sample (batch 1):
 * shapes are inferred node by node, BatchNormalization is folded into the Conv/Gemm before it,
 * a Relu (or a constant bias Add after a MatMul) is fused into the layer before it, and reshapes
 * become aliases of their input. An operator outside the layer library stops generation with one
 * line naming the node and the operator.
 */
import { ConfigError } from "../core/config.js";
import { DataType, type OnnxModel, type OnnxNode, type OnnxTensor } from "./onnx.js";

export type Shape = readonly number[];

/** Where a value lives at run time. */
export type Value =
  | { readonly kind: "input"; readonly name: string; readonly shape: Shape }
  | {
      readonly kind: "const";
      readonly name: string;
      readonly shape: Shape;
      readonly data: Float32Array;
    }
  | {
      readonly kind: "act";
      readonly name: string;
      readonly shape: Shape;
      readonly storage: string;
    };

/** Input C, H, W and output M, OH, OW (1-D convolutions have H = OH = 1); padding at the start. */
export interface ConvLayer extends Readonly<Omit<Window, "pb" | "pr">> {
  readonly op: "conv";
  readonly nodes: string[];
  readonly x: string;
  y: string;
  readonly c: number;
  readonly m: number;
  readonly group: number;
  /** [M][C/group][kh][kw], as ONNX stores it. */
  weights: Float32Array;
  bias: Float32Array | undefined;
  relu: boolean;
}

export interface GemmLayer {
  readonly op: "gemm";
  readonly nodes: string[];
  readonly x: string;
  y: string;
  readonly rows: number;
  readonly k: number;
  readonly n: number;
  /** Element (r, k) of the input is x[r * rowStride + k * kStride]. */
  readonly rowStride: number;
  readonly kStride: number;
  readonly alpha: number;
  /** [K][N]: the output channel is the fastest axis. */
  weights: Float32Array;
  /** beta * C broadcast to [rows][N], or undefined. */
  bias: Float32Array | undefined;
  relu: boolean;
}

export interface PoolLayer extends Readonly<Window> {
  readonly op: "maxpool" | "avgpool";
  readonly nodes: string[];
  readonly x: string;
  readonly y: string;
  readonly c: number;
  readonly countIncludePad: boolean;
}

export interface GlobalPoolLayer {
  readonly op: "globalavgpool";
  readonly nodes: string[];
  readonly x: string;
  readonly y: string;
  readonly c: number;
  readonly plane: number;
}

export interface AffineLayer {
  readonly op: "affine";
  readonly nodes: string[];
  readonly x: string;
  y: string;
  readonly c: number;
  readonly inner: number;
  readonly scale: Float32Array;
  readonly shift: Float32Array;
  relu: boolean;
}

export interface UnaryLayer {
  readonly op: "relu" | "sigmoid" | "clip";
  readonly nodes: string[];
  readonly x: string;
  readonly y: string;
  readonly size: number;
  readonly lo: number;
  readonly hi: number;
}

export type BinaryOp = "add" | "sub" | "mul" | "div";

export interface BinaryLayer {
  readonly op: "binary";
  readonly fn: BinaryOp;
  readonly nodes: string[];
  readonly a: string;
  readonly b: string;
  y: string;
  readonly shape: Shape;
  /** Strides of a and b over the output's dimensions (0 where broadcast); undefined: same shapes. */
  readonly aStrides: readonly number[] | undefined;
  readonly bStrides: readonly number[] | undefined;
  relu: boolean;
}

export interface ConcatLayer {
  readonly op: "concat";
  readonly nodes: string[];
  readonly inputs: readonly string[];
  readonly y: string;
  readonly outer: number;
  /** Elements per outer step of each input, and of the output. */
  readonly inners: readonly number[];
  readonly innerOut: number;
}

export type Layer =
  | ConvLayer
  | GemmLayer
  | PoolLayer
  | GlobalPoolLayer
  | AffineLayer
  | UnaryLayer
  | BinaryLayer
  | ConcatLayer;

export interface LoweredGraph {
  readonly input: Value & { kind: "input" };
  readonly layers: readonly Layer[];
  /** Every value by name (the aliases of a reshape share their source's storage). */
  readonly values: ReadonlyMap<string, Value>;
  /** The graph outputs the device program returns, in the order asked for. */
  readonly outputs: readonly string[];
  /** ONNX op types of the graph, in first-seen order (for the report). */
  readonly opTypes: readonly string[];
}

/** The operators the layer library runs (Constant and the reshapes cost nothing at run time). */
export const SUPPORTED_OPS = [
  "Conv",
  "Gemm",
  "MatMul",
  "Add",
  "Sub",
  "Mul",
  "Div",
  "Relu",
  "Sigmoid",
  "Clip",
  "MaxPool",
  "AveragePool",
  "GlobalAveragePool",
  "BatchNormalization",
  "Flatten",
  "Reshape",
  "Concat",
  "Identity",
  "Dropout",
  "Constant",
] as const;

const supported = new Set<string>(SUPPORTED_OPS);

export interface LowerOptions {
  /** Name of the stage's input tensor. */
  readonly input: string;
  /** Per-sample input shape (without the batch dimension): the manifest's, or the previous stage's features. */
  readonly inputShape: Shape | undefined;
  /** Graph outputs to return, in order (logits, and features when the stage has them). */
  readonly outputs: readonly string[];
  /** For messages: the ONNX file as the user knows it. */
  readonly file: string;
}

const size = (s: Shape) => s.reduce((a, b) => a * b, 1);

class Lowering {
  readonly values = new Map<string, Value>();
  readonly layers: Layer[] = [];
  /** How many nodes read each value, plus one for a graph output. */
  readonly uses = new Map<string, number>();
  /** The layer that wrote each activation, for fusions. */
  readonly producer = new Map<string, Layer>();
  private storageCount = 0;

  constructor(
    readonly model: OnnxModel,
    readonly options: LowerOptions,
  ) {}

  fail(node: OnnxNode | undefined, message: string): never {
    const where = node ? `node "${node.name || node.outputs[0] || "?"}" (${node.opType}): ` : "";
    throw new ConfigError(`${this.options.file}: ${where}${message}`);
  }

  value(node: OnnxNode, name: string | undefined): Value {
    if (name === undefined || name === "") this.fail(node, "a required input is missing");
    const v = this.values.get(name);
    if (!v) this.fail(node, `input "${name}" is not produced by any earlier node`);
    return v;
  }

  constant(node: OnnxNode, name: string | undefined, what: string): Value & { kind: "const" } {
    const v = this.value(node, name);
    if (v.kind !== "const")
      this.fail(node, `${what} "${name}" must be a constant (an initializer or a Constant node)`);
    return v;
  }

  activation(name: string, shape: Shape): void {
    this.values.set(name, { kind: "act", name, shape, storage: `s${this.storageCount++}` });
  }

  alias(node: OnnxNode, from: Value, name: string, shape: Shape): void {
    if (size(shape) !== size(from.shape))
      this.fail(
        node,
        `output shape [${shape.join(", ")}] does not hold the input's ${size(from.shape)} values`,
      );
    this.values.set(name, { ...from, name, shape } as Value);
  }

  soleUse(name: string): boolean {
    return (this.uses.get(name) ?? 0) === 1;
  }
}

function attrInt(node: OnnxNode, name: string, fallback: number): number {
  const a = node.attributes.get(name);
  return a && (a.kind === "int" || a.kind === "float") ? a.value : fallback;
}

function attrFloat(node: OnnxNode, name: string, fallback: number): number {
  const a = node.attributes.get(name);
  return a && (a.kind === "float" || a.kind === "int") ? a.value : fallback;
}

function attrInts(node: OnnxNode, name: string): readonly number[] | undefined {
  const a = node.attributes.get(name);
  return a && a.kind === "ints" ? a.value : undefined;
}

function attrString(node: OnnxNode, name: string, fallback: string): string {
  const a = node.attributes.get(name);
  return a && a.kind === "string" ? a.value : fallback;
}

function tensorFloats(t: OnnxTensor): Float32Array {
  return t.values instanceof Float32Array ? t.values : Float32Array.from(t.values);
}

/** Lowers the graph; throws ConfigError naming the node for anything the library cannot run. */
export function lowerGraph(model: OnnxModel, options: LowerOptions): LoweredGraph {
  const L = new Lowering(model, options);
  const opset = model.opsets.get("") ?? 13;
  for (const node of model.nodes) {
    if (node.domain !== "" && node.domain !== "ai.onnx")
      L.fail(node, `operator domain "${node.domain}" is not supported`);
    if (!supported.has(node.opType))
      L.fail(node, `operator ${node.opType} is not supported by the C generator`);
  }
  for (const [name, t] of model.initializers) {
    L.values.set(name, { kind: "const", name, shape: t.dims, data: tensorFloats(t) });
  }
  const graphInputs = model.inputs.filter((i) => !model.initializers.has(i.name));
  if (graphInputs.length !== 1 || graphInputs[0]!.name !== options.input) {
    L.fail(
      undefined,
      `the stage takes one input "${options.input}"; the graph's inputs are [${graphInputs.map((i) => i.name).join(", ")}]`,
    );
  }
  const info = graphInputs[0]!;
  if (info.elemType !== DataType.FLOAT) L.fail(undefined, `input "${info.name}" is not float32`);
  const declared = info.shape?.slice(1);
  let sample: number[] | undefined;
  if (options.inputShape) sample = [...options.inputShape];
  else if (declared?.every((d) => typeof d === "number" && d > 0)) sample = declared as number[];
  if (sample === undefined)
    return L.fail(undefined, `input "${info.name}" has no fixed per-sample shape`);
  const input = { kind: "input" as const, name: info.name, shape: [1, ...sample] };
  L.values.set(input.name, input);

  for (const node of model.nodes)
    for (const i of node.inputs) if (i !== "") L.uses.set(i, (L.uses.get(i) ?? 0) + 1);
  for (const o of model.outputs) L.uses.set(o.name, (L.uses.get(o.name) ?? 0) + 1);

  const opTypes: string[] = [];
  for (const node of model.nodes) {
    if (!opTypes.includes(node.opType)) opTypes.push(node.opType);
    lowerNode(L, node, opset);
  }
  const graphOutputs = new Set(model.outputs.map((o) => o.name));
  for (const name of options.outputs) {
    if (!graphOutputs.has(name)) L.fail(undefined, `"${name}" is not an output of the graph`);
    if (!L.values.has(name)) L.fail(undefined, `output "${name}" is never computed`);
  }
  return { input, layers: L.layers, values: L.values, outputs: options.outputs, opTypes };
}

function lowerNode(L: Lowering, node: OnnxNode, opset: number): void {
  const out = node.outputs[0];
  if (out === undefined || out === "") L.fail(node, "has no output");
  switch (node.opType) {
    case "Constant":
      lowerConstant(L, node, out);
      return;
    case "Identity":
    case "Dropout": {
      if (node.outputs.length > 1 && node.outputs[1] !== "")
        L.fail(node, "the mask output of Dropout is not supported");
      const x = L.value(node, node.inputs[0]);
      L.alias(node, x, out, x.shape);
      return;
    }
    case "Flatten": {
      const x = L.value(node, node.inputs[0]);
      let axis = attrInt(node, "axis", 1);
      if (axis < 0) axis += x.shape.length;
      if (axis < 0 || axis > x.shape.length) L.fail(node, `axis ${axis} is out of range`);
      L.alias(node, x, out, [size(x.shape.slice(0, axis)), size(x.shape.slice(axis))]);
      return;
    }
    case "Reshape":
      lowerReshape(L, node, out);
      return;
    case "Conv":
      lowerConv(L, node, out);
      return;
    case "Gemm":
      lowerGemm(L, node, out);
      return;
    case "MatMul":
      lowerMatMul(L, node, out);
      return;
    case "Add":
    case "Sub":
    case "Mul":
    case "Div":
      lowerBinary(L, node, out);
      return;
    case "Relu":
    case "Sigmoid":
    case "Clip":
      lowerUnary(L, node, out, opset);
      return;
    case "MaxPool":
    case "AveragePool":
      lowerPool(L, node, out);
      return;
    case "GlobalAveragePool": {
      const x = L.value(node, node.inputs[0]);
      if (x.kind === "const") L.fail(node, "a constant input is not supported");
      if (x.shape.length < 3) L.fail(node, "needs an input of rank 3 or more [N, C, ...]");
      const shape = [1, x.shape[1]!, ...x.shape.slice(2).map(() => 1)];
      L.activation(out, shape);
      push(L, {
        op: "globalavgpool",
        nodes: [node.name],
        x: x.name,
        y: out,
        c: x.shape[1]!,
        plane: size(x.shape.slice(2)),
      });
      return;
    }
    case "BatchNormalization":
      lowerBatchNorm(L, node, out);
      return;
    case "Concat":
      lowerConcat(L, node, out);
      return;
    default:
      L.fail(node, `operator ${node.opType} is not supported by the C generator`);
  }
}

function push(L: Lowering, layer: Layer): void {
  L.layers.push(layer);
  L.producer.set(layer.y, layer);
}

function lowerConstant(L: Lowering, node: OnnxNode, out: string): void {
  const a = node.attributes.get("value");
  if (a?.kind === "tensor") {
    L.values.set(out, {
      kind: "const",
      name: out,
      shape: a.value.dims,
      data: tensorFloats(a.value),
    });
    return;
  }
  const f = node.attributes.get("value_float");
  if (f?.kind === "float") {
    L.values.set(out, { kind: "const", name: out, shape: [], data: Float32Array.of(f.value) });
    return;
  }
  const fs = node.attributes.get("value_floats") ?? node.attributes.get("value_ints");
  if (fs && (fs.kind === "floats" || fs.kind === "ints")) {
    L.values.set(out, {
      kind: "const",
      name: out,
      shape: [fs.value.length],
      data: Float32Array.from(fs.value),
    });
    return;
  }
  const i = node.attributes.get("value_int");
  if (i?.kind === "int") {
    L.values.set(out, { kind: "const", name: out, shape: [], data: Float32Array.of(i.value) });
    return;
  }
  L.fail(node, "only tensor and numeric Constant values are supported");
}

function lowerReshape(L: Lowering, node: OnnxNode, out: string): void {
  const x = L.value(node, node.inputs[0]);
  let spec: readonly number[];
  if (node.inputs.length >= 2) {
    const s = L.constant(node, node.inputs[1], "the shape");
    spec = Array.from(s.data);
  } else {
    const attr = attrInts(node, "shape");
    if (!attr) L.fail(node, "has no shape");
    spec = attr;
  }
  const allowZero = attrInt(node, "allowzero", 0) === 1;
  const dims = spec.map((d, i) => (d === 0 && !allowZero ? (x.shape[i] ?? 0) : d));
  const known = dims.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
  const free = dims.filter((d) => d === -1).length;
  if (free > 1) L.fail(node, "more than one -1 in the shape");
  const shape = dims.map((d) => (d === -1 ? (known === 0 ? 0 : size(x.shape) / known) : d));
  if (shape.some((d) => !Number.isInteger(d) || d < 0))
    L.fail(
      node,
      `shape [${spec.join(", ")}] does not fit an input of shape [${x.shape.join(", ")}]`,
    );
  L.alias(node, x, out, shape);
}

/** Spatial parameters shared by Conv and the pools (1-D and 2-D). */
export interface Window {
  h: number;
  w: number;
  oh: number;
  ow: number;
  kh: number;
  kw: number;
  sh: number;
  sw: number;
  dh: number;
  dw: number;
  pt: number;
  pl: number;
  pb: number;
  pr: number;
}

function windowOf(
  L: Lowering,
  node: OnnxNode,
  spatial: readonly number[],
  kernel: readonly number[],
  ceilMode: boolean,
): Window {
  const n = spatial.length;
  if (n !== 1 && n !== 2)
    L.fail(node, `${n} spatial dimensions are not supported (1-D and 2-D only)`);
  const strides = attrInts(node, "strides") ?? new Array(n).fill(1);
  const dilations = attrInts(node, "dilations") ?? new Array(n).fill(1);
  let pads = attrInts(node, "pads") ?? new Array(2 * n).fill(0);
  const autoPad = attrString(node, "auto_pad", "NOTSET");
  if (
    kernel.length !== n ||
    strides.length !== n ||
    dilations.length !== n ||
    pads.length !== 2 * n
  )
    L.fail(node, "kernel_shape, strides, dilations and pads do not match the input's rank");
  const outs: number[] = [];
  if (autoPad === "SAME_UPPER" || autoPad === "SAME_LOWER") {
    const p: number[] = new Array(2 * n).fill(0);
    for (let i = 0; i < n; i++) {
      const o = Math.ceil(spatial[i]! / strides[i]!);
      const total = Math.max(
        0,
        (o - 1) * strides[i]! + (kernel[i]! - 1) * dilations[i]! + 1 - spatial[i]!,
      );
      const small = Math.floor(total / 2);
      p[i] = autoPad === "SAME_UPPER" ? small : total - small;
      p[i + n] = total - p[i]!;
      outs.push(o);
    }
    pads = p;
  } else if (autoPad === "VALID") {
    pads = new Array(2 * n).fill(0);
  } else if (autoPad !== "NOTSET") L.fail(node, `auto_pad ${autoPad} is not supported`);
  if (outs.length === 0) {
    for (let i = 0; i < n; i++) {
      const span = spatial[i]! + pads[i]! + pads[i + n]! - ((kernel[i]! - 1) * dilations[i]! + 1);
      let o = (ceilMode ? Math.ceil(span / strides[i]!) : Math.floor(span / strides[i]!)) + 1;
      // With ceil_mode the last window must still start inside the input or its leading pad.
      if (ceilMode && (o - 1) * strides[i]! >= spatial[i]! + pads[i]!) o--;
      outs.push(o);
    }
  }
  if (outs.some((o) => o < 1))
    L.fail(node, `the window is larger than the padded input [${spatial.join(", ")}]`);
  const two = n === 2;
  return {
    h: two ? spatial[0]! : 1,
    w: spatial[n - 1]!,
    oh: two ? outs[0]! : 1,
    ow: outs[n - 1]!,
    kh: two ? kernel[0]! : 1,
    kw: kernel[n - 1]!,
    sh: two ? strides[0]! : 1,
    sw: strides[n - 1]!,
    dh: two ? dilations[0]! : 1,
    dw: dilations[n - 1]!,
    pt: two ? pads[0]! : 0,
    pl: pads[n - 1]!,
    pb: two ? pads[n]! : 0,
    pr: pads[2 * n - 1]!,
  };
}

function lowerConv(L: Lowering, node: OnnxNode, out: string): void {
  const x = L.value(node, node.inputs[0]);
  if (x.kind === "const") L.fail(node, "a constant input is not supported");
  const w = L.constant(node, node.inputs[1], "the weight");
  if (x.shape.length < 3) L.fail(node, `input of shape [${x.shape.join(", ")}] is not [N, C, ...]`);
  const c = x.shape[1]!;
  const group = attrInt(node, "group", 1);
  const m = w.shape[0]!;
  const kernel = attrInts(node, "kernel_shape") ?? w.shape.slice(2);
  if (w.shape.length !== x.shape.length || w.shape[1]! * group !== c || m % group !== 0)
    L.fail(
      node,
      `weight [${w.shape.join(", ")}] with group ${group} does not fit input [${x.shape.join(", ")}]`,
    );
  const win = windowOf(L, node, x.shape.slice(2), kernel, false);
  let bias: Float32Array | undefined;
  if (node.inputs[2] !== undefined && node.inputs[2] !== "") {
    bias = L.constant(node, node.inputs[2], "the bias").data;
    if (bias.length !== m) L.fail(node, `bias has ${bias.length} values for ${m} output channels`);
  }
  const spatialOut = x.shape.length === 4 ? [win.oh, win.ow] : [win.ow];
  L.activation(out, [1, m, ...spatialOut]);
  // A Conv layer carries the padding at the start only: with the output size it fixes the rest.
  const { pb: _pb, pr: _pr, ...start } = win;
  push(L, {
    op: "conv",
    nodes: [node.name],
    x: x.name,
    y: out,
    c,
    m,
    ...start,
    group,
    weights: w.data,
    bias,
    relu: false,
  });
}

/** Broadcasts a constant to [rows][n] as Gemm's C (unidirectional broadcasting). */
function gemmBias(
  L: Lowering,
  node: OnnxNode,
  c: Value & { kind: "const" },
  rows: number,
  n: number,
  beta: number,
): Float32Array {
  const dims = [...c.shape];
  while (dims.length < 2) dims.unshift(1);
  if (dims.length > 2 || (dims[0] !== 1 && dims[0] !== rows) || (dims[1] !== 1 && dims[1] !== n))
    L.fail(node, `C of shape [${c.shape.join(", ")}] does not broadcast to [${rows}, ${n}]`);
  const out = new Float32Array(rows * n);
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < n; j++) {
      const v = c.data[(dims[0] === 1 ? 0 : r) * dims[1]! + (dims[1] === 1 ? 0 : j)]!;
      out[r * n + j] = beta === 1 ? v : Math.fround(beta * v);
    }
  return out;
}

function lowerGemm(L: Lowering, node: OnnxNode, out: string): void {
  const a = L.value(node, node.inputs[0]);
  if (a.kind === "const") L.fail(node, "a constant A is not supported");
  const b = L.constant(node, node.inputs[1], "B");
  if (a.shape.length !== 2 || b.shape.length !== 2) L.fail(node, "A and B must be matrices");
  const transA = attrInt(node, "transA", 0) === 1;
  const transB = attrInt(node, "transB", 0) === 1;
  const rows = transA ? a.shape[1]! : a.shape[0]!;
  const k = transA ? a.shape[0]! : a.shape[1]!;
  const kb = transB ? b.shape[1]! : b.shape[0]!;
  const n = transB ? b.shape[0]! : b.shape[1]!;
  if (k !== kb)
    L.fail(node, `A [${a.shape.join(", ")}] and B [${b.shape.join(", ")}] do not multiply`);
  const weights = new Float32Array(k * n);
  for (let i = 0; i < k; i++)
    for (let j = 0; j < n; j++) weights[i * n + j] = b.data[transB ? j * k + i : i * n + j]!;
  const beta = attrFloat(node, "beta", 1);
  let bias: Float32Array | undefined;
  if (node.inputs[2] !== undefined && node.inputs[2] !== "" && beta !== 0)
    bias = gemmBias(L, node, L.constant(node, node.inputs[2], "C"), rows, n, beta);
  L.activation(out, [rows, n]);
  push(L, {
    op: "gemm",
    nodes: [node.name],
    x: a.name,
    y: out,
    rows,
    k,
    n,
    rowStride: transA ? 1 : k,
    kStride: transA ? rows : 1,
    alpha: attrFloat(node, "alpha", 1),
    weights,
    bias,
    relu: false,
  });
}

function lowerMatMul(L: Lowering, node: OnnxNode, out: string): void {
  const a = L.value(node, node.inputs[0]);
  if (a.kind === "const") L.fail(node, "a constant A is not supported");
  const b = L.constant(node, node.inputs[1], "B");
  if (b.shape.length > 2 || b.shape.length < 1)
    L.fail(node, "B must be a constant matrix or vector");
  const k = b.shape[0]!;
  const n = b.shape.length === 2 ? b.shape[1]! : 1;
  const ak = a.shape[a.shape.length - 1]!;
  if (ak !== k)
    L.fail(node, `A [${a.shape.join(", ")}] and B [${b.shape.join(", ")}] do not multiply`);
  const lead = a.shape.slice(0, -1);
  const rows = size(lead);
  const shape = b.shape.length === 2 ? [...lead, n] : lead;
  L.activation(out, shape.length === 0 ? [1] : shape);
  push(L, {
    op: "gemm",
    nodes: [node.name],
    x: a.name,
    y: out,
    rows,
    k,
    n,
    rowStride: k,
    kStride: 1,
    alpha: 1,
    weights: Float32Array.from(b.data),
    bias: undefined,
    relu: false,
  });
}

/** Numpy broadcasting of two shapes. */
function broadcastShape(a: Shape, b: Shape): number[] | undefined {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) return undefined;
    out.push(da === 1 ? db : da);
  }
  return out;
}

function broadcastStrides(s: Shape, out: Shape): number[] {
  const strides: number[] = new Array(out.length).fill(0);
  let stride = 1;
  for (let i = out.length - 1; i >= 0; i--) {
    const d = s[s.length - out.length + i] ?? 1;
    strides[i] = d === 1 ? 0 : stride;
    stride *= d;
  }
  return strides;
}

function lowerBinary(L: Lowering, node: OnnxNode, out: string): void {
  const a = L.value(node, node.inputs[0]);
  const b = L.value(node, node.inputs[1]);
  const fn = node.opType.toLowerCase() as BinaryOp;
  const shape = broadcastShape(a.shape, b.shape);
  if (!shape)
    L.fail(node, `shapes [${a.shape.join(", ")}] and [${b.shape.join(", ")}] do not broadcast`);
  if (a.kind === "const" && b.kind === "const") {
    L.fail(node, "both inputs are constants (fold them before export)");
  }
  // A MatMul (or a bias-less Gemm) followed by the addition of a constant bias: one layer.
  if (fn === "add") {
    const act = a.kind === "const" ? b : a;
    const other = a.kind === "const" ? a : b.kind === "const" ? b : undefined;
    const layer = L.producer.get(act.name);
    if (
      other?.kind === "const" &&
      layer?.op === "gemm" &&
      layer.y === act.name &&
      !layer.bias &&
      !layer.relu &&
      L.soleUse(act.name) &&
      size(shape) === size(act.shape)
    ) {
      const bias = gemmBias(
        L,
        node,
        { ...other, shape: trimLeadingOnes(other.shape) },
        layer.rows,
        layer.n,
        1,
      );
      layer.bias = bias;
      layer.nodes.push(node.name);
      retarget(L, layer, out, act.shape);
      return;
    }
  }
  const same =
    a.shape.length === shape.length &&
    b.shape.length === shape.length &&
    size(a.shape) === size(shape) &&
    size(b.shape) === size(shape);
  L.activation(out, shape);
  push(L, {
    op: "binary",
    fn,
    nodes: [node.name],
    a: a.name,
    b: b.name,
    y: out,
    shape,
    aStrides: same ? undefined : broadcastStrides(a.shape, shape),
    bStrides: same ? undefined : broadcastStrides(b.shape, shape),
    relu: false,
  });
}

function trimLeadingOnes(s: Shape): Shape {
  let i = 0;
  while (i < s.length - 2 && s[i] === 1) i++;
  return s.slice(i);
}

/** Makes `layer` write `name` instead of its old output (which had no other reader). */
function retarget(L: Lowering, layer: Layer & { y: string }, name: string, shape: Shape): void {
  const old = layer.y;
  L.values.delete(old);
  L.producer.delete(old);
  layer.y = name;
  L.producer.set(name, layer);
  const v = { kind: "act" as const, name, shape, storage: `s_${name}` };
  L.values.set(name, v);
}

function lowerUnary(L: Lowering, node: OnnxNode, out: string, opset: number): void {
  const x = L.value(node, node.inputs[0]);
  if (x.kind === "const") L.fail(node, "a constant input is not supported");
  if (node.opType === "Relu") {
    const layer = L.producer.get(x.name);
    if (
      layer &&
      (layer.op === "conv" ||
        layer.op === "gemm" ||
        layer.op === "affine" ||
        layer.op === "binary") &&
      layer.y === x.name &&
      !layer.relu &&
      L.soleUse(x.name)
    ) {
      layer.relu = true;
      layer.nodes.push(node.name);
      retarget(L, layer, out, x.shape);
      return;
    }
  }
  let lo = Number.NEGATIVE_INFINITY;
  let hi = Number.POSITIVE_INFINITY;
  if (node.opType === "Clip") {
    if (opset < 11) {
      lo = attrFloat(node, "min", lo);
      hi = attrFloat(node, "max", hi);
    } else {
      const bound = (i: number, what: string) => {
        const name = node.inputs[i];
        if (name === undefined || name === "") return undefined;
        const c = L.constant(node, name, what);
        if (c.data.length !== 1) L.fail(node, `${what} must be a scalar`);
        return c.data[0]!;
      };
      lo = bound(1, "min") ?? lo;
      hi = bound(2, "max") ?? hi;
    }
  }
  L.activation(out, x.shape);
  push(L, {
    op: node.opType.toLowerCase() as "relu" | "sigmoid" | "clip",
    nodes: [node.name],
    x: x.name,
    y: out,
    size: size(x.shape),
    lo,
    hi,
  });
}

function lowerPool(L: Lowering, node: OnnxNode, out: string): void {
  const x = L.value(node, node.inputs[0]);
  if (x.kind === "const") L.fail(node, "a constant input is not supported");
  if (node.outputs.length > 1 && node.outputs[1] !== "")
    L.fail(node, "the Indices output is not supported");
  if (x.shape.length < 3) L.fail(node, `input of shape [${x.shape.join(", ")}] is not [N, C, ...]`);
  const kernel = attrInts(node, "kernel_shape");
  if (!kernel) L.fail(node, "has no kernel_shape");
  if (node.opType === "MaxPool" && attrInt(node, "storage_order", 0) !== 0)
    L.fail(node, "storage_order 1 is not supported");
  const win = windowOf(L, node, x.shape.slice(2), kernel, attrInt(node, "ceil_mode", 0) === 1);
  const spatialOut = x.shape.length === 4 ? [win.oh, win.ow] : [win.ow];
  L.activation(out, [1, x.shape[1]!, ...spatialOut]);
  push(L, {
    op: node.opType === "MaxPool" ? "maxpool" : "avgpool",
    nodes: [node.name],
    x: x.name,
    y: out,
    c: x.shape[1]!,
    ...win,
    countIncludePad: attrInt(node, "count_include_pad", 0) === 1,
  });
}

function lowerBatchNorm(L: Lowering, node: OnnxNode, out: string): void {
  const x = L.value(node, node.inputs[0]);
  if (x.kind === "const") L.fail(node, "a constant input is not supported");
  if (node.outputs.slice(1).some((o) => o !== ""))
    L.fail(node, "training-mode outputs are not supported");
  if (attrInt(node, "training_mode", 0) === 1) L.fail(node, "training_mode 1 is not supported");
  const params = [1, 2, 3, 4].map(
    (i) => L.constant(node, node.inputs[i], ["scale", "B", "mean", "var"][i - 1]!).data,
  );
  const [gamma, beta, mean, variance] = params as [
    Float32Array,
    Float32Array,
    Float32Array,
    Float32Array,
  ];
  const c = x.shape[1] ?? 1;
  if (params.some((p) => p.length !== c))
    L.fail(node, `parameters must have ${c} values (one per channel)`);
  const eps = attrFloat(node, "epsilon", 1e-5);
  const scale = new Float32Array(c);
  const shift = new Float32Array(c);
  for (let i = 0; i < c; i++) {
    scale[i] = Math.fround(
      gamma[i]! / Math.fround(Math.sqrt(Math.fround(variance[i]! + Math.fround(eps)))),
    );
    shift[i] = Math.fround(beta[i]! - Math.fround(mean[i]! * scale[i]!));
  }
  const layer = L.producer.get(x.name);
  const foldable =
    layer && layer.y === x.name && L.soleUse(x.name) && !("relu" in layer && layer.relu);
  if (foldable && layer.op === "conv") {
    const per = layer.weights.length / layer.m;
    const w = new Float32Array(layer.weights.length);
    for (let i = 0; i < w.length; i++)
      w[i] = Math.fround(layer.weights[i]! * scale[Math.floor(i / per)]!);
    const b = new Float32Array(layer.m);
    for (let m = 0; m < layer.m; m++)
      b[m] = Math.fround(Math.fround((layer.bias?.[m] ?? 0) * scale[m]!) + shift[m]!);
    layer.weights = w;
    layer.bias = b;
    layer.nodes.push(node.name);
    retarget(L, layer, out, x.shape);
    return;
  }
  if (foldable && layer.op === "gemm" && x.shape.length === 2 && layer.n === c) {
    const w = new Float32Array(layer.weights.length);
    for (let i = 0; i < w.length; i++) w[i] = Math.fround(layer.weights[i]! * scale[i % layer.n]!);
    const b = new Float32Array(layer.rows * layer.n);
    for (let i = 0; i < b.length; i++) {
      const j = i % layer.n;
      b[i] = Math.fround(Math.fround((layer.bias?.[i] ?? 0) * scale[j]!) + shift[j]!);
    }
    // alpha scales the product only; fold it into the weights so y = x.W' + b' holds.
    if (layer.alpha !== 1)
      for (let i = 0; i < w.length; i++) w[i] = Math.fround(w[i]! * layer.alpha);
    Object.assign(layer, { alpha: 1 });
    layer.weights = w;
    layer.bias = b;
    layer.nodes.push(node.name);
    retarget(L, layer, out, x.shape);
    return;
  }
  L.activation(out, x.shape);
  push(L, {
    op: "affine",
    nodes: [node.name],
    x: x.name,
    y: out,
    c,
    inner: size(x.shape.slice(2)),
    scale,
    shift,
    relu: false,
  });
}

function lowerConcat(L: Lowering, node: OnnxNode, out: string): void {
  const inputs = node.inputs.filter((i) => i !== "").map((i) => L.value(node, i));
  if (inputs.length === 0) L.fail(node, "has no inputs");
  const rank = inputs[0]!.shape.length;
  let axis = attrInt(node, "axis", 0);
  if (axis < 0) axis += rank;
  if (axis < 0 || axis >= rank) L.fail(node, `axis ${attrInt(node, "axis", 0)} is out of range`);
  const shape = [...inputs[0]!.shape];
  shape[axis] = 0;
  for (const v of inputs) {
    if (v.shape.length !== rank || v.shape.some((d, i) => i !== axis && d !== inputs[0]!.shape[i]))
      L.fail(
        node,
        `input "${v.name}" [${v.shape.join(", ")}] does not fit [${inputs[0]!.shape.join(", ")}]`,
      );
    shape[axis] = shape[axis]! + v.shape[axis]!;
  }
  L.activation(out, shape);
  push(L, {
    op: "concat",
    nodes: [node.name],
    inputs: inputs.map((v) => v.name),
    y: out,
    outer: size(shape.slice(0, axis)),
    inners: inputs.map((v) => size(v.shape.slice(axis))),
    innerOut: size(shape.slice(axis)),
  });
}
