import { createGunzip } from "node:zlib";
import { formatBytes } from "./download.js";
import { BundleError } from "./manifest.js";

/**
 * The most a bundle archive may unpack to. Its bytes are held in memory by the operator and
 * every tier; a gzip bomb (1 GiB of zeros is 1 MiB of gzip) must fail here, not exhaust memory.
 */
export const MAX_UNPACKED_BUNDLE_BYTES = 256 * 1024 * 1024;

export interface UnpackOptions {
  /** Refuse an archive that unpacks to more than this (default 256 MiB). */
  maxUnpackedBytes?: number;
}

/**
 * Reads the regular files of a (gzipped) tar archive into memory. Bundles are a few MiB, so an
 * in-memory reader keeps the loader free of temporary directories. Understands ustar name
 * prefixes, GNU long names and pax `path` records; everything but regular files is skipped.
 *
 * The gzip stream is unpacked piece by piece on libuv's thread pool (so a reconcile worker or a
 * tier keeps its event loop: leases renew, probes answer) and parsed as it comes; only the files'
 * bytes are kept, and the read stops as soon as the unpacked size passes the cap.
 */
export async function readTarGz(
  archive: Uint8Array,
  name: string,
  options: UnpackOptions = {},
): Promise<Map<string, Uint8Array>> {
  const tar = new TarReader(name, options.maxUnpackedBytes ?? MAX_UNPACKED_BUNDLE_BYTES);
  if (archive[0] !== 0x1f || archive[1] !== 0x8b) {
    tar.push(archive);
    return tar.finish();
  }
  const gunzip = createGunzip({ chunkSize: 64 * 1024 });
  try {
    gunzip.end(archive);
    for await (const chunk of gunzip as AsyncIterable<Buffer>) tar.push(chunk);
  } catch (err) {
    if (err instanceof BundleError) throw err;
    throw new BundleError(
      name,
      undefined,
      `not a readable gzip archive (${(err as Error).message})`,
    );
  } finally {
    gunzip.destroy();
  }
  return tar.finish();
}

/** A tar parser fed in pieces of any size: 512-byte headers, then bodies padded to 512. */
class TarReader {
  private readonly files = new Map<string, Uint8Array>();
  private readonly header = new Uint8Array(512);
  private headerFill = 0;
  /** Bytes of the tar stream seen so far (the unpacked size). */
  private seen = 0;
  /** Bytes of the tar stream parsed so far. */
  private offset = 0;
  private ended = false;
  private longName: string | undefined;
  /** The entry whose body (then padding) is being read. */
  private entry:
    | {
        at: number;
        type: string;
        path: string;
        bodyLeft: number;
        padLeft: number;
        parts: Uint8Array[];
      }
    | undefined;

  constructor(
    private readonly name: string,
    private readonly cap: number,
  ) {}

  push(chunk: Uint8Array): void {
    this.seen += chunk.length;
    if (this.seen > this.cap) throw this.tooLarge(`stopped after unpacking ${this.seen} bytes`);
    // What follows the end-of-archive block is only counted (gzip still checks its CRC).
    let at = 0;
    while (at < chunk.length && !this.ended) {
      const entry = this.entry;
      if (entry === undefined) {
        const n = Math.min(512 - this.headerFill, chunk.length - at);
        this.header.set(chunk.subarray(at, at + n), this.headerFill);
        this.headerFill += n;
        at += n;
        if (this.headerFill === 512) {
          this.headerFill = 0;
          this.onHeader();
          this.offset += 512;
        }
        continue;
      }
      if (entry.bodyLeft > 0) {
        const n = Math.min(entry.bodyLeft, chunk.length - at);
        if (entry.type !== "skip") entry.parts.push(chunk.subarray(at, at + n));
        entry.bodyLeft -= n;
        at += n;
        this.offset += n;
        if (entry.bodyLeft === 0) this.onBody(entry);
      } else {
        const n = Math.min(entry.padLeft, chunk.length - at);
        entry.padLeft -= n;
        at += n;
        this.offset += n;
      }
      if (entry.bodyLeft === 0 && entry.padLeft === 0) this.entry = undefined;
    }
  }

  finish(): Map<string, Uint8Array> {
    if (this.entry !== undefined && this.entry.bodyLeft > 0)
      throw this.error(`tar entry at byte ${this.entry.at} is truncated`);
    if (this.files.size === 0) throw this.error("archive holds no files");
    return this.files;
  }

  private onHeader(): void {
    const header = this.header;
    if (header.every((b) => b === 0)) {
      this.ended = true;
      return;
    }
    if (!checksumOk(header)) throw this.error(`corrupt tar header at byte ${this.offset}`);
    const size = parseOctal(header.subarray(124, 136));
    if (!Number.isSafeInteger(size) || size < 0)
      throw this.error(`corrupt tar header at byte ${this.offset} (size field)`);
    const type = String.fromCharCode(header[156] ?? 0);
    let path = "";
    if (type !== "L" && type !== "x" && type !== "g") {
      path = (this.longName ?? joinUstarName(header)).replace(/^(\.\/)+/, "");
      this.longName = undefined;
    }
    // Refused at its header: this entry alone would pass the cap.
    if (this.offset + 512 + size > this.cap)
      throw this.tooLarge(
        `the entry ${path || type} at byte ${this.offset} declares ${size} bytes`,
      );
    const keep = type === "0" || type === "\0" || type === "L" || type === "x";
    const entry = {
      at: this.offset,
      type: keep ? type : "skip",
      path,
      bodyLeft: size,
      padLeft: Math.ceil(size / 512) * 512 - size,
      parts: [] as Uint8Array[],
    };
    if (size === 0) this.onBody(entry);
    if (size > 0 || entry.padLeft > 0) this.entry = entry;
  }

  private onBody(entry: { type: string; path: string; parts: Uint8Array[] }): void {
    if (entry.type === "skip") return;
    // Copied out of the unpacked chunks, so a kept file holds its own bytes and no neighbours'.
    const joined = Buffer.concat(entry.parts);
    const body = new Uint8Array(joined.buffer, joined.byteOffset, joined.byteLength);
    entry.parts = [];
    if (entry.type === "L") this.longName = cString(body);
    else if (entry.type === "x") this.longName = paxPath(body) ?? this.longName;
    else this.files.set(entry.path, body);
  }

  private tooLarge(detail: string): BundleError {
    return this.error(
      `unpacks to more than ${formatBytes(this.cap)}, the limit for an unpacked bundle (${detail})`,
    );
  }

  private error(detail: string): BundleError {
    return new BundleError(this.name, undefined, detail);
  }
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
