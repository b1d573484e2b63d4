/**
 * Tensor bodies of DDN1 frames: f32, f16 or u8q, optionally compressed: deflated (zlib format,
 * RFC 1950) or sparse (a bitmap of the non-zero bytes, then those bytes; docs/protocol.md).
 */
import { deflateSync, inflateSync } from "node:zlib";
import { FrameError, type WireCompression, type WireDtype } from "./frame.js";
import { fromHalf, toHalf } from "./half.js";

export interface TensorEncoding {
  readonly dtype: WireDtype;
  readonly compression: WireCompression;
}

/** The header fields that describe an encoded tensor. */
export interface TensorFields {
  dtype: WireDtype;
  shape: number[];
  compression: WireCompression;
  scale?: number;
  zero?: number;
}

const BYTES: Record<WireDtype, number> = { f32: 4, f16: 2, u8q: 1 };

/** Encodes float32 data of the given shape; returns the header fields and the body bytes. */
export function encodeTensor(
  data: Float32Array,
  shape: readonly number[],
  encoding: TensorEncoding,
): { fields: TensorFields; body: Uint8Array } {
  const fields: TensorFields = {
    dtype: encoding.dtype,
    shape: [...shape],
    compression: encoding.compression,
  };
  let raw: Uint8Array;
  switch (encoding.dtype) {
    case "f32": {
      raw = new Uint8Array(data.length * 4);
      const view = new DataView(raw.buffer);
      for (let i = 0; i < data.length; i++) view.setFloat32(i * 4, data[i] as number, true);
      break;
    }
    case "f16": {
      raw = new Uint8Array(data.length * 2);
      const view = new DataView(raw.buffer);
      for (let i = 0; i < data.length; i++) view.setUint16(i * 2, toHalf(data[i] as number), true);
      break;
    }
    case "u8q": {
      // Asymmetric per-tensor quantization over a range that includes 0, so ReLU features
      // (all >= 0) get zero = 0 and exact zeros stay exact.
      let lo = 0;
      let hi = 0;
      for (const v of data) {
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      const scale = hi > lo ? (hi - lo) / 255 : 1;
      const zero = Math.min(255, Math.max(0, Math.round(-lo / scale)));
      raw = new Uint8Array(data.length);
      for (let i = 0; i < data.length; i++) {
        raw[i] = Math.min(255, Math.max(0, Math.round((data[i] as number) / scale) + zero));
      }
      fields.scale = scale;
      fields.zero = zero;
      break;
    }
  }
  const body =
    encoding.compression === "deflate"
      ? new Uint8Array(deflateSync(raw, { level: 6 }))
      : encoding.compression === "sparse"
        ? sparseEncode(raw)
        : raw;
  return { fields, body };
}

/**
 * The "sparse" body code: ceil(L / 8) bitmap bytes, bit i (least significant bit first in byte
 * i >> 3) set where raw byte i is not zero, then the non-zero bytes in order. ReLU features are
 * mostly zero after quantization, so this is about as small as deflate on them (~10% larger on
 * fashion-deep) for a fraction of the CPU on both sides.
 */
export function sparseEncode(raw: Uint8Array): Uint8Array {
  const mapBytes = (raw.length + 7) >> 3;
  let nonZero = 0;
  for (let i = 0; i < raw.length; i++) if (raw[i] !== 0) nonZero++;
  const out = new Uint8Array(mapBytes + nonZero);
  let k = mapBytes;
  for (let i = 0; i < raw.length; i++) {
    const b = raw[i] as number;
    if (b !== 0) {
      out[i >> 3] = (out[i >> 3] as number) | (1 << (i & 7));
      out[k++] = b;
    }
  }
  return out;
}

/** The raw bytes of a "sparse" body that must expand to `expected` bytes; throws FrameError. */
export function sparseDecode(body: Uint8Array, expected: number): Uint8Array {
  const mapBytes = (expected + 7) >> 3;
  if (body.length < mapBytes) {
    throw new FrameError(
      "bad_frame",
      `sparse body of ${body.length} bytes is shorter than the ${mapBytes}-byte bitmap of ${expected} bytes`,
    );
  }
  const raw = new Uint8Array(expected);
  let k = mapBytes;
  for (let j = 0; j < mapBytes; j++) {
    let bits = body[j] as number;
    if (bits === 0) continue;
    if (j === mapBytes - 1 && expected & 7 && bits >> (expected & 7)) {
      throw new FrameError(
        "bad_frame",
        `sparse body's bitmap marks bytes past the ${expected} the tensor has`,
      );
    }
    const base = j << 3;
    while (bits !== 0) {
      const bit = 31 - Math.clz32(bits & -bits);
      if (k >= body.length) {
        throw new FrameError(
          "bad_frame",
          `sparse body's bitmap marks more non-zero bytes than the ${body.length - mapBytes} it holds`,
        );
      }
      raw[base + bit] = body[k++] as number;
      bits &= bits - 1;
    }
  }
  if (k !== body.length) {
    throw new FrameError(
      "bad_frame",
      `sparse body holds ${body.length - mapBytes} bytes after its bitmap, which marks ${k - mapBytes}`,
    );
  }
  return raw;
}

/**
 * Decodes a tensor body to float32. `maxElements` bounds the work a frame can ask for
 * (a deflate bomb or a lying shape is refused before allocating).
 */
export function decodeTensor(
  fields: TensorFields,
  body: Uint8Array,
  maxElements: number,
): Float32Array {
  const count = fields.shape.reduce((a, b) => a * b, 1);
  if (count > maxElements) {
    throw new FrameError(
      "bad_frame",
      `tensor shape [${fields.shape.join(", ")}] has ${count} elements, over the limit of ${maxElements}`,
    );
  }
  const expected = count * BYTES[fields.dtype];
  let raw = body;
  if (fields.compression === "deflate") {
    try {
      const inflated = inflateSync(body, { maxOutputLength: Math.max(expected, 1) });
      raw = new Uint8Array(inflated.buffer, inflated.byteOffset, inflated.byteLength);
    } catch (err) {
      throw new FrameError(
        "bad_frame",
        `deflate body does not inflate to ${expected} bytes (${(err as Error).message})`,
      );
    }
  } else if (fields.compression === "sparse") {
    raw = sparseDecode(body, expected);
  }
  if (raw.length !== expected) {
    throw new FrameError(
      "bad_frame",
      `body holds ${raw.length} bytes; ${fields.dtype} shape [${fields.shape.join(", ")}] needs ${expected}`,
    );
  }
  const out = new Float32Array(count);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  switch (fields.dtype) {
    case "f32":
      for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, true);
      break;
    case "f16":
      for (let i = 0; i < count; i++) out[i] = fromHalf(view.getUint16(i * 2, true));
      break;
    case "u8q": {
      if (fields.scale === undefined || fields.zero === undefined) {
        throw new FrameError("bad_frame", "u8q tensors need header fields scale and zero");
      }
      const { scale, zero } = fields;
      // A byte has 256 values: dequantize each once (the same float32 the element would get),
      // then look the elements up. A finite scale can still overflow (1e308 * 255): a value
      // that is not finite is looked for only when the table holds one.
      const table = new Float32Array(256);
      let finite = true;
      for (let b = 0; b < 256; b++) {
        table[b] = scale * (b - zero);
        if (!Number.isFinite(table[b] as number)) finite = false;
      }
      for (let i = 0; i < count; i++) out[i] = table[raw[i] as number] as number;
      if (!finite) {
        for (let i = 0; i < count; i++) {
          if (!Number.isFinite(out[i] as number))
            throw new FrameError("bad_frame", `tensor element ${i} is not finite`);
        }
      }
      return out;
    }
  }
  for (let i = 0; i < count; i++) {
    if (!Number.isFinite(out[i] as number))
      throw new FrameError("bad_frame", `tensor element ${i} is not finite`);
  }
  return out;
}
