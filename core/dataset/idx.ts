import { readFile } from "node:fs/promises";
import { gunzipSync } from "node:zlib";
import { ConfigError } from "../config.js";

/** An idx file (the MNIST format): unsigned bytes with a shape. */
export interface IdxArray {
  /** Full shape, first dimension is the item count. */
  readonly shape: readonly number[];
  readonly data: Uint8Array;
}

const IDX_U8 = 0x08;

/** Reads an idx file, gzipped or not. Only the unsigned-byte element type is supported. */
export async function readIdx(path: string): Promise<IdxArray> {
  let raw: Uint8Array;
  try {
    raw = await readFile(path);
  } catch (err) {
    throw new ConfigError(
      `${path}: cannot read the idx file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    );
  }
  return parseIdx(raw, path);
}

/** Parses idx bytes (gzipped or not); a file that is not one is the user's to fix (ConfigError). */
export function parseIdx(raw: Uint8Array, name = "idx"): IdxArray {
  let bytes = raw;
  if (raw[0] === 0x1f && raw[1] === 0x8b) {
    try {
      bytes = new Uint8Array(gunzipSync(raw));
    } catch (err) {
      throw new ConfigError(`${name}: not a readable gzip file (${(err as Error).message})`);
    }
  }
  if (bytes.length < 4 || bytes[0] !== 0 || bytes[1] !== 0) {
    throw new ConfigError(`${name}: not an idx file (bad magic number)`);
  }
  if (bytes[2] !== IDX_U8) {
    throw new ConfigError(
      `${name}: idx element type 0x${(bytes[2] ?? 0).toString(16)} is not supported (only unsigned bytes, 0x08)`,
    );
  }
  const rank = bytes[3] ?? 0;
  if (rank < 1) throw new ConfigError(`${name}: idx file has no dimensions`);
  const headerLength = 4 + 4 * rank;
  if (bytes.length < headerLength) throw new ConfigError(`${name}: idx header is truncated`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const shape: number[] = [];
  for (let i = 0; i < rank; i++) shape.push(view.getUint32(4 + 4 * i, false));
  const count = shape.reduce((a, b) => a * b, 1);
  if (bytes.length - headerLength < count) {
    throw new ConfigError(
      `${name}: idx body holds ${bytes.length - headerLength} bytes, shape [${shape.join(", ")}] needs ${count}`,
    );
  }
  return { shape, data: bytes.subarray(headerLength, headerLength + count) };
}

/** Encodes an idx file of unsigned bytes (used by tests and sample tools). */
export function encodeIdx(shape: readonly number[], data: Uint8Array): Uint8Array {
  const header = new Uint8Array(4 + 4 * shape.length);
  const view = new DataView(header.buffer);
  header[2] = IDX_U8;
  header[3] = shape.length;
  shape.forEach((d, i) => {
    view.setUint32(4 + 4 * i, d, false);
  });
  const out = new Uint8Array(header.length + data.length);
  out.set(header, 0);
  out.set(data, header.length);
  return out;
}
