import { gunzipSync } from "node:zlib";

/**
 * Reads the regular files of a (gzipped) tar archive into memory. Bundles are a few MiB, so an
 * in-memory reader keeps the loader free of temporary directories. Understands ustar name
 * prefixes, GNU long names and pax `path` records; everything but regular files is skipped.
 */
export function readTarGz(archive: Uint8Array, name: string): Map<string, Uint8Array> {
  let tar: Uint8Array;
  try {
    tar =
      archive[0] === 0x1f && archive[1] === 0x8b ? new Uint8Array(gunzipSync(archive)) : archive;
  } catch (err) {
    throw new Error(`${name}: not a readable gzip archive (${(err as Error).message})`);
  }
  const files = new Map<string, Uint8Array>();
  let offset = 0;
  let longName: string | undefined;
  while (offset + 512 <= tar.length) {
    const header = tar.subarray(offset, offset + 512);
    if (header.every((b) => b === 0)) break;
    if (!checksumOk(header)) throw new Error(`${name}: corrupt tar header at byte ${offset}`);
    const size = parseOctal(header.subarray(124, 136));
    const type = String.fromCharCode(header[156] ?? 0);
    const bodyStart = offset + 512;
    if (bodyStart + size > tar.length)
      throw new Error(`${name}: tar entry at byte ${offset} is truncated`);
    const body = tar.subarray(bodyStart, bodyStart + size);
    offset = bodyStart + Math.ceil(size / 512) * 512;
    if (type === "L") {
      longName = cString(body);
      continue;
    }
    if (type === "x") {
      longName = paxPath(body) ?? longName;
      continue;
    }
    if (type === "g") continue;
    let path = longName ?? joinUstarName(header);
    longName = undefined;
    if (type !== "0" && type !== "\0") continue;
    path = path.replace(/^(\.\/)+/, "");
    files.set(path, body);
  }
  if (files.size === 0) throw new Error(`${name}: archive holds no files`);
  return files;
}

function joinUstarName(header: Uint8Array): string {
  const base = cString(header.subarray(0, 100));
  const magic = cString(header.subarray(257, 263));
  const prefix = magic.startsWith("ustar") ? cString(header.subarray(345, 500)) : "";
  return prefix ? `${prefix}/${base}` : base;
}

function cString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end === -1 ? bytes : bytes.subarray(0, end));
}

function parseOctal(field: Uint8Array): number {
  const text = cString(field).trim();
  return text === "" ? 0 : Number.parseInt(text, 8);
}

function checksumOk(header: Uint8Array): boolean {
  const stored = parseOctal(header.subarray(148, 156));
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : (header[i] ?? 0);
  return sum === stored;
}

function paxPath(body: Uint8Array): string | undefined {
  const text = new TextDecoder().decode(body);
  for (const record of text.split("\n")) {
    const m = /^\d+ path=(.*)$/.exec(record);
    if (m) return m[1];
  }
  return undefined;
}
