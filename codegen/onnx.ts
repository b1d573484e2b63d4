/**
 * A small reader of ONNX protobuf (onnx.proto3): just the parts a device stage's graph needs
 * (nodes, attributes, initializers, inputs and outputs with their shapes, opsets). Tensors with
 * external data, sparse initializers and subgraphs are refused with a message naming them.
 */

/** ONNX TensorProto.DataType values this reader decodes. */
export const DataType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
  DOUBLE: 11,
} as const;

export interface OnnxTensor {
  readonly name: string;
  readonly dims: readonly number[];
  readonly dataType: number;
  /** The values as numbers (float tensors as float32, integer tensors exactly when they fit). */
  readonly values: Float32Array | Float64Array | number[];
}

export type AttributeValue =
  | { readonly kind: "float"; readonly value: number }
  | { readonly kind: "int"; readonly value: number }
  | { readonly kind: "string"; readonly value: string }
  | { readonly kind: "tensor"; readonly value: OnnxTensor }
  | { readonly kind: "floats"; readonly value: readonly number[] }
  | { readonly kind: "ints"; readonly value: readonly number[] }
  | { readonly kind: "other"; readonly type: number };

export interface OnnxNode {
  readonly name: string;
  readonly opType: string;
  readonly domain: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  readonly attributes: ReadonlyMap<string, AttributeValue>;
}

/** A dimension: a number when fixed, a name (dim_param) or undefined when not. */
export type OnnxDim = number | string | undefined;

export interface OnnxValueInfo {
  readonly name: string;
  readonly elemType: number;
  /** undefined when the model gives no shape. */
  readonly shape: readonly OnnxDim[] | undefined;
}

export interface OnnxModel {
  readonly irVersion: number;
  readonly producer: string;
  /** Opset version per domain ("" is the default ONNX domain). */
  readonly opsets: ReadonlyMap<string, number>;
  readonly graphName: string;
  readonly nodes: readonly OnnxNode[];
  readonly initializers: ReadonlyMap<string, OnnxTensor>;
  readonly inputs: readonly OnnxValueInfo[];
  readonly outputs: readonly OnnxValueInfo[];
}

export class OnnxFormatError extends Error {
  override name = "OnnxFormatError";
}

/** Protobuf wire-format cursor over one message's bytes. */
class Reader {
  private pos = 0;
  private readonly view: DataView;
  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  get done(): boolean {
    return this.pos >= this.bytes.length;
  }
  /** Next field: its number and wire type. */
  key(): { field: number; wire: number } {
    const k = this.varint();
    return { field: Number(k >> 3n), wire: Number(k & 7n) };
  }
  varint(): bigint {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (this.pos >= this.bytes.length) throw new OnnxFormatError("truncated varint");
      const b = this.bytes[this.pos++] as number;
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return result;
      shift += 7n;
      if (shift > 70n) throw new OnnxFormatError("varint too long");
    }
  }
  /** A varint read as a signed 64-bit integer, returned as a number (int64 fields). */
  int(): number {
    return Number(BigInt.asIntN(64, this.varint()));
  }
  bytesField(): Uint8Array {
    const n = Number(this.varint());
    if (this.pos + n > this.bytes.length)
      throw new OnnxFormatError("truncated length-delimited field");
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  string(): string {
    return new TextDecoder().decode(this.bytesField());
  }
  fixed32(): number {
    if (this.pos + 4 > this.bytes.length) throw new OnnxFormatError("truncated fixed32");
    const v = this.view.getFloat32(this.pos, true);
    this.pos += 4;
    return v;
  }
  fixed64(): number {
    if (this.pos + 8 > this.bytes.length) throw new OnnxFormatError("truncated fixed64");
    const v = this.view.getFloat64(this.pos, true);
    this.pos += 8;
    return v;
  }
  skip(wire: number): void {
    switch (wire) {
      case 0:
        this.varint();
        return;
      case 1:
        this.pos += 8;
        return;
      case 2:
        this.bytesField();
        return;
      case 5:
        this.pos += 4;
        return;
      default:
        throw new OnnxFormatError(`unsupported protobuf wire type ${wire}`);
    }
  }
}

/** Repeated int64: packed (wire 2) or one varint per element (wire 0). */
function pushInts(r: Reader, wire: number, into: number[]): void {
  if (wire === 2) {
    const inner = new Reader(r.bytesField());
    while (!inner.done) into.push(inner.int());
  } else into.push(r.int());
}

/** Repeated float: packed (wire 2) or one fixed32 per element (wire 5). */
function pushFloats(r: Reader, wire: number, into: number[]): void {
  if (wire === 2) {
    const inner = new Reader(r.bytesField());
    while (!inner.done) into.push(inner.fixed32());
  } else into.push(r.fixed32());
}

function pushDoubles(r: Reader, wire: number, into: number[]): void {
  if (wire === 2) {
    const inner = new Reader(r.bytesField());
    while (!inner.done) into.push(inner.fixed64());
  } else into.push(r.fixed64());
}

export function readTensor(bytes: Uint8Array): OnnxTensor {
  const r = new Reader(bytes);
  const dims: number[] = [];
  let dataType = 0;
  let name = "";
  let raw: Uint8Array | undefined;
  const floats: number[] = [];
  const ints: number[] = [];
  const doubles: number[] = [];
  let external = false;
  while (!r.done) {
    const { field, wire } = r.key();
    if (field === 1) pushInts(r, wire, dims);
    else if (field === 2) dataType = r.int();
    else if (field === 4) pushFloats(r, wire, floats);
    else if (field === 5 || field === 7 || field === 11) pushInts(r, wire, ints);
    else if (field === 8) name = r.string();
    else if (field === 9) raw = r.bytesField();
    else if (field === 10) pushDoubles(r, wire, doubles);
    else if (field === 13) {
      external = true;
      r.skip(wire);
    } else if (field === 14) {
      if (r.int() === 1) external = true;
    } else r.skip(wire);
  }
  const label = name === "" ? "a tensor" : `tensor "${name}"`;
  if (external) throw new OnnxFormatError(`${label} keeps its data in an external file`);
  const count = dims.reduce((a, b) => a * b, 1);
  let values: OnnxTensor["values"];
  if (raw !== undefined) values = decodeRaw(raw, dataType, count, label);
  else if (dataType === DataType.FLOAT) values = Float32Array.from(floats);
  else if (dataType === DataType.DOUBLE) values = Float64Array.from(doubles);
  else if (isInteger(dataType)) values = ints;
  else
    throw new OnnxFormatError(
      `${label} has data type ${dataType}, which this reader cannot decode`,
    );
  if (values.length !== count) {
    throw new OnnxFormatError(
      `${label} holds ${values.length} values, its shape [${dims.join(", ")}] needs ${count}`,
    );
  }
  return { name, dims, dataType, values };
}

function isInteger(t: number): boolean {
  return (
    t === DataType.INT32 || t === DataType.INT64 || t === DataType.UINT8 || t === DataType.INT8
  );
}

function decodeRaw(raw: Uint8Array, dataType: number, count: number, label: string) {
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const size: Record<number, number> = {
    [DataType.FLOAT]: 4,
    [DataType.DOUBLE]: 8,
    [DataType.INT32]: 4,
    [DataType.INT64]: 8,
    [DataType.UINT8]: 1,
    [DataType.INT8]: 1,
  };
  const width = size[dataType];
  if (width === undefined)
    throw new OnnxFormatError(
      `${label} has data type ${dataType}, which this reader cannot decode`,
    );
  if (raw.length !== width * count) {
    throw new OnnxFormatError(
      `${label}: raw_data has ${raw.length} bytes, ${count} values need ${width * count}`,
    );
  }
  switch (dataType) {
    case DataType.FLOAT:
      return Float32Array.from({ length: count }, (_, i) => view.getFloat32(4 * i, true));
    case DataType.DOUBLE:
      return Float64Array.from({ length: count }, (_, i) => view.getFloat64(8 * i, true));
    case DataType.INT32:
      return Array.from({ length: count }, (_, i) => view.getInt32(4 * i, true));
    case DataType.INT64:
      return Array.from({ length: count }, (_, i) => Number(view.getBigInt64(8 * i, true)));
    case DataType.UINT8:
      return Array.from(raw);
    default:
      return Array.from({ length: count }, (_, i) => view.getInt8(i));
  }
}

function readAttribute(bytes: Uint8Array): { name: string; value: AttributeValue } {
  const r = new Reader(bytes);
  let name = "";
  let type = 0;
  let f: number | undefined;
  let i: number | undefined;
  let s: Uint8Array | undefined;
  let t: OnnxTensor | undefined;
  const floats: number[] = [];
  const ints: number[] = [];
  while (!r.done) {
    const { field, wire } = r.key();
    if (field === 1) name = r.string();
    else if (field === 2) f = r.fixed32();
    else if (field === 3) i = r.int();
    else if (field === 4) s = r.bytesField();
    else if (field === 5) t = readTensor(r.bytesField());
    else if (field === 7) pushFloats(r, wire, floats);
    else if (field === 8) pushInts(r, wire, ints);
    else if (field === 20) type = r.int();
    else r.skip(wire);
  }
  // AttributeType: FLOAT 1, INT 2, STRING 3, TENSOR 4, GRAPH 5, FLOATS 6, INTS 7.
  switch (type) {
    case 1:
      return { name, value: { kind: "float", value: f ?? 0 } };
    case 2:
      return { name, value: { kind: "int", value: i ?? 0 } };
    case 3:
      return {
        name,
        value: { kind: "string", value: new TextDecoder().decode(s ?? new Uint8Array()) },
      };
    case 4:
      if (t === undefined) throw new OnnxFormatError(`attribute "${name}" has no tensor`);
      return { name, value: { kind: "tensor", value: t } };
    case 6:
      return { name, value: { kind: "floats", value: floats } };
    case 7:
      return { name, value: { kind: "ints", value: ints } };
    default:
      return { name, value: { kind: "other", type } };
  }
}

function readNode(bytes: Uint8Array): OnnxNode {
  const r = new Reader(bytes);
  const inputs: string[] = [];
  const outputs: string[] = [];
  const attributes = new Map<string, AttributeValue>();
  let name = "";
  let opType = "";
  let domain = "";
  while (!r.done) {
    const { field, wire } = r.key();
    if (field === 1) inputs.push(r.string());
    else if (field === 2) outputs.push(r.string());
    else if (field === 3) name = r.string();
    else if (field === 4) opType = r.string();
    else if (field === 5) {
      const a = readAttribute(r.bytesField());
      attributes.set(a.name, a.value);
    } else if (field === 7) domain = r.string();
    else r.skip(wire);
  }
  return { name, opType, domain, inputs, outputs, attributes };
}

function readValueInfo(bytes: Uint8Array): OnnxValueInfo {
  const r = new Reader(bytes);
  let name = "";
  let elemType = 0;
  let shape: OnnxDim[] | undefined;
  while (!r.done) {
    const { field, wire } = r.key();
    if (field === 1) name = r.string();
    else if (field === 2) {
      const type = new Reader(r.bytesField());
      while (!type.done) {
        const k = type.key();
        if (k.field !== 1) {
          type.skip(k.wire);
          continue;
        }
        const tensor = new Reader(type.bytesField());
        while (!tensor.done) {
          const kt = tensor.key();
          if (kt.field === 1) elemType = tensor.int();
          else if (kt.field === 2) {
            shape = [];
            const sh = new Reader(tensor.bytesField());
            while (!sh.done) {
              const ks = sh.key();
              if (ks.field !== 1) {
                sh.skip(ks.wire);
                continue;
              }
              const dim = new Reader(sh.bytesField());
              let d: OnnxDim;
              while (!dim.done) {
                const kd = dim.key();
                if (kd.field === 1) d = dim.int();
                else if (kd.field === 2) d = dim.string();
                else dim.skip(kd.wire);
              }
              shape.push(d);
            }
          } else tensor.skip(kt.wire);
        }
      }
    } else r.skip(wire);
  }
  return { name, elemType, shape };
}

/** Parses the bytes of an .onnx file. */
export function readOnnx(bytes: Uint8Array): OnnxModel {
  const r = new Reader(bytes);
  let irVersion = 0;
  let producer = "";
  let graph: Uint8Array | undefined;
  const opsets = new Map<string, number>();
  while (!r.done) {
    const { field, wire } = r.key();
    if (field === 1) irVersion = r.int();
    else if (field === 2) producer = r.string();
    else if (field === 7) graph = r.bytesField();
    else if (field === 8) {
      const o = new Reader(r.bytesField());
      let domain = "";
      let version = 0;
      while (!o.done) {
        const k = o.key();
        if (k.field === 1) domain = o.string();
        else if (k.field === 2) version = o.int();
        else o.skip(k.wire);
      }
      opsets.set(domain === "ai.onnx" ? "" : domain, version);
    } else r.skip(wire);
  }
  if (graph === undefined) throw new OnnxFormatError("no graph in the model");
  const g = new Reader(graph);
  const nodes: OnnxNode[] = [];
  const initializers = new Map<string, OnnxTensor>();
  const inputs: OnnxValueInfo[] = [];
  const outputs: OnnxValueInfo[] = [];
  let graphName = "";
  while (!g.done) {
    const { field, wire } = g.key();
    if (field === 1) nodes.push(readNode(g.bytesField()));
    else if (field === 2) graphName = g.string();
    else if (field === 5) {
      const t = readTensor(g.bytesField());
      initializers.set(t.name, t);
    } else if (field === 11) inputs.push(readValueInfo(g.bytesField()));
    else if (field === 12) outputs.push(readValueInfo(g.bytesField()));
    else if (field === 15) throw new OnnxFormatError("sparse initializers are not supported");
    else g.skip(wire);
  }
  return { irVersion, producer, opsets, graphName, nodes, initializers, inputs, outputs };
}
