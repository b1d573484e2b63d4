/**
 * Writes ONNX graphs of any operators and small bundles around them, so the generator's tests can
 * cover every operator, stride, pad, dilation and group against onnxruntime without Python.
 */
import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** A protobuf message written field by field (what an ONNX model is). */
export class Proto {
  private readonly parts: number[] = [];
  varint(field: number, value: number | bigint): this {
    this.key(field, 0);
    this.raw(BigInt(value));
    return this;
  }
  fixed32(field: number, value: number): this {
    this.key(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.parts.push(...b);
    return this;
  }
  bytes(field: number, data: Uint8Array): this {
    this.key(field, 2);
    this.raw(BigInt(data.length));
    for (const b of data) this.parts.push(b);
    return this;
  }
  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }
  message(field: number, m: Proto): this {
    return this.bytes(field, m.done());
  }
  done(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
  private key(field: number, wire: number): void {
    this.raw(BigInt((field << 3) | wire));
  }
  private raw(v: bigint): void {
    let x = BigInt.asUintN(64, v);
    do {
      let b = Number(x & 0x7fn);
      x >>= 7n;
      if (x !== 0n) b |= 0x80;
      this.parts.push(b);
    } while (x !== 0n);
  }
}

/** An attribute value: a number is an int unless wrapped as { f }, arrays of ints as { ints }. */
export type Attr =
  | number
  | string
  | { readonly f: number }
  | { readonly ints: readonly number[] }
  | { readonly floats: readonly number[] };

function attribute(name: string, value: Attr): Proto {
  const a = new Proto().string(1, name);
  if (typeof value === "number") return a.varint(3, value).varint(20, 2);
  if (typeof value === "string") return a.string(4, value).varint(20, 3);
  if ("f" in value) return a.fixed32(2, value.f).varint(20, 1);
  if ("ints" in value) {
    for (const v of value.ints) a.varint(8, v);
    return a.varint(20, 7);
  }
  for (const v of value.floats) a.fixed32(7, v);
  return a.varint(20, 6);
}

function tensor(
  name: string,
  dims: readonly number[],
  values: ArrayLike<number>,
  int64: boolean,
): Proto {
  const t = new Proto();
  for (const d of dims) t.varint(1, d);
  t.varint(2, int64 ? 7 : 1).string(8, name);
  if (int64) {
    const b = new Uint8Array(8 * values.length);
    const view = new DataView(b.buffer);
    for (let i = 0; i < values.length; i++) view.setBigInt64(8 * i, BigInt(values[i]!), true);
    return t.bytes(9, b);
  }
  return t.bytes(9, new Uint8Array(Float32Array.from(values).buffer));
}

/** ONNX TensorProto element types. */
export const FLOAT = 1;
export const UINT8 = 2;

/** A graph input or output: its name, element type and dims (a string dim is a named one). */
export function valueInfo(
  name: string,
  dims: readonly (number | string)[],
  elem: number = FLOAT,
): Proto {
  const shape = new Proto();
  for (const d of dims)
    shape.message(1, typeof d === "number" ? new Proto().varint(1, d) : new Proto().string(2, d));
  const t = new Proto().varint(1, elem).message(2, shape);
  return new Proto().string(1, name).message(2, new Proto().message(1, t));
}

/** Deterministic values in [-scale, scale) from a small LCG. */
export function randomValues(seed: number, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 31 - 1) * scale;
  }
  return out;
}

/** One ONNX graph (opset 13), built node by node. */
export class GraphBuilder {
  private readonly graph = new Proto().string(2, "codegen-test");
  private count = 0;
  private seed = 1;

  constructor(private readonly opset = 13) {}

  input(name: string, dims: readonly (number | string)[]): this {
    this.graph.message(11, valueInfo(name, dims));
    return this;
  }

  output(name: string, dims: readonly (number | string)[]): this {
    this.graph.message(12, valueInfo(name, dims));
    return this;
  }

  /** A float initializer (random values when none are given); returns its name. */
  weight(dims: readonly number[], values?: ArrayLike<number>, scale = 0.5): string {
    const name = `w${this.count++}`;
    const n = dims.reduce((a, b) => a * b, 1);
    this.graph.message(
      5,
      tensor(name, dims, values ?? randomValues(this.seed++ * 7919, n, scale), false),
    );
    return name;
  }

  int64(dims: readonly number[], values: readonly number[]): string {
    const name = `i${this.count++}`;
    this.graph.message(5, tensor(name, dims, values, true));
    return name;
  }

  /** Adds a node; returns the name of its (first) output. */
  node(
    op: string,
    inputs: readonly string[],
    attrs: Record<string, Attr> = {},
    output?: string,
  ): string {
    const out = output ?? `t${this.count++}`;
    const n = new Proto();
    for (const i of inputs) n.string(1, i);
    n.string(2, out).string(3, `${op.toLowerCase()}_${out}`).string(4, op);
    for (const [k, v] of Object.entries(attrs)) n.message(5, attribute(k, v));
    this.graph.message(1, n);
    return out;
  }

  bytes(): Uint8Array {
    return new Proto()
      .varint(1, 7)
      .string(2, "ddnn-fog-codegen-tests")
      .message(7, this.graph)
      .message(8, new Proto().string(1, "").varint(2, this.opset))
      .done();
  }
}

export interface TestStage {
  readonly name: string;
  readonly onnx: Uint8Array;
  readonly input: string;
  readonly features?: string;
  readonly logits: string;
  readonly threshold?: number;
}

/** Writes a Contract 1 bundle directory. */
export function writeTestBundle(
  dir: string,
  bundle: {
    readonly name: string;
    readonly input: { shape: number[]; scale: number; mean: number[]; std: number[] };
    readonly classes: number;
    readonly stages: readonly TestStage[];
  },
): string {
  mkdirSync(dir, { recursive: true });
  const stages = bundle.stages.map((s) => {
    const file = `${s.name}.onnx`;
    writeFileSync(join(dir, file), s.onnx);
    return {
      name: s.name,
      file,
      sha256: createHash("sha256").update(s.onnx).digest("hex"),
      input: s.input,
      ...(s.features === undefined ? {} : { features: s.features }),
      logits: s.logits,
      ...(s.threshold === undefined ? {} : { exit: { threshold: s.threshold } }),
    };
  });
  const manifest = {
    format: "ddnn-bundle/v1",
    name: bundle.name,
    version: "0.0.1",
    labels: Array.from({ length: bundle.classes }, (_, i) => `class-${i}`),
    input: { dtype: "float32", ...bundle.input },
    stages,
  };
  writeFileSync(join(dir, "ddnn.json"), `${JSON.stringify(manifest, null, 2)}\n`);
  return dir;
}

/** An idx file of u8 items. */
export function idxBytes(shape: readonly number[], data: Uint8Array): Uint8Array {
  const header = new Uint8Array(4 + 4 * shape.length);
  const view = new DataView(header.buffer);
  header[2] = 0x08;
  header[3] = shape.length;
  shape.forEach((d, i) => {
    view.setUint32(4 + 4 * i, d, false);
  });
  const out = new Uint8Array(header.length + data.length);
  out.set(header);
  out.set(data, header.length);
  return out;
}
