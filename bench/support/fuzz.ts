/**
 * Mutation fuzzing of what the fog reads from outside: the DDN1 frame decoder, the tensor decoder
 * and the bundle loader. Seeds are real: frames the project's own encoder makes from real device
 * features, and real bundles packed as `ddnn bundle pack` packs them. Mutations are seeded
 * (one 32-bit seed reproduces a run): bit flips, interesting bytes, truncation, extension,
 * splices of two seeds, edits of the frame's length field and the tar size fields (with the tar
 * checksum fixed up, so the edit reaches past the checksum), and edits of JSON header fields.
 *
 * The property, per input: the target returns or throws one of its documented errors
 * (FrameError for frames and tensors, BundleError for bundles), within a time bound, and the
 * process does not grow absurdly (a length field claiming 4 GiB is refused before allocating).
 * test/fuzz.test.ts runs it for a few seconds in CI; bench/fuzz.ts runs it for as long as asked.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync, gzipSync } from "node:zlib";
import { bundleFiles, packReproducibly } from "../../cli/bundle.js";
import { packageRoot } from "../../cli/paths.js";
import { BundleError } from "../../core/bundle/manifest.js";
import { readBundle, readBundleArchive } from "../../core/bundle/read.js";
import { readIdx } from "../../core/dataset/idx.js";
import { ExitPolicy } from "../../core/exit.js";
import { isForward, Pipeline } from "../../core/pipeline.js";
import {
  decodeFrame,
  decodeRequest,
  decodeResult,
  encodeFrame,
  FrameError,
  tensorHeaderSchema,
} from "../../core/wire/frame.js";
import { decodeTensor, encodeTensor } from "../../core/wire/tensor.js";

/** mulberry32: small, fast, and the same sequence for the same seed on every machine. */
export class Prng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
}

export interface FuzzTarget {
  readonly name: string;
  /** What the target may throw; anything else is a finding. */
  readonly allowed: readonly (abstract new (
    ...args: never[]
  ) => Error)[];
  readonly seeds: readonly Uint8Array[];
  /** Structure-aware mutations on top of the generic byte ones. */
  readonly mutators: readonly ((input: Uint8Array, rng: Prng) => Uint8Array)[];
  run(input: Uint8Array): unknown;
}

export interface Finding {
  readonly target: string;
  readonly kind: "crash" | "slow" | "memory";
  readonly detail: string;
  readonly input: Uint8Array;
}

export interface TargetStats {
  readonly target: string;
  inputs: number;
  /** Inputs the target accepted (returned without an error). */
  accepted: number;
  /** Documented errors, by message with numbers blanked: how far into the decoder inputs got. */
  readonly errors: Map<string, number>;
  maxMs: number;
  totalMs: number;
}

// ---------------------------------------------------------------- generic byte mutations

const INTERESTING = [0, 1, 0x7f, 0x80, 0xff, 0x30, 0x39, 0x22, 0x7b, 0x7d, 0x5b, 0x2c];
const INTERESTING_U32 = [
  0, 1, 2, 7, 8, 255, 256, 511, 512, 65_535, 65_536, 65_537, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe,
  0xffff_ffff,
];

function copy(input: Uint8Array): Uint8Array {
  return new Uint8Array(input);
}

const byteMutators: readonly ((
  input: Uint8Array,
  rng: Prng,
  seeds: readonly Uint8Array[],
) => Uint8Array)[] = [
  // Bit flips.
  (input, rng) => {
    const out = copy(input);
    for (let k = 1 + rng.int(8); k > 0 && out.length > 0; k--) {
      const i = rng.int(out.length);
      out[i] = out[i]! ^ (1 << rng.int(8));
    }
    return out;
  },
  // Interesting bytes.
  (input, rng) => {
    const out = copy(input);
    for (let k = 1 + rng.int(4); k > 0 && out.length > 0; k--)
      out[rng.int(out.length)] = rng.pick(INTERESTING);
    return out;
  },
  // Random bytes over a short run.
  (input, rng) => {
    const out = copy(input);
    if (out.length === 0) return out;
    const at = rng.int(out.length);
    for (let i = at; i < Math.min(out.length, at + 1 + rng.int(32)); i++) out[i] = rng.int(256);
    return out;
  },
  // Truncation.
  (input, rng) => input.slice(0, rng.int(input.length + 1)),
  // Extension with random bytes.
  (input, rng) => {
    const extra = Uint8Array.from({ length: 1 + rng.int(64) }, () => rng.int(256));
    const out = new Uint8Array(input.length + extra.length);
    out.set(input);
    out.set(extra, input.length);
    return out;
  },
  // Delete or duplicate a chunk.
  (input, rng) => {
    if (input.length < 2) return copy(input);
    const a = rng.int(input.length);
    const n = 1 + rng.int(Math.min(512, input.length - a));
    if (rng.next() < 0.5) return concat(input.subarray(0, a), input.subarray(a + n));
    return concat(input.subarray(0, a + n), input.subarray(a));
  },
  // Splice: the head of this input, the tail of another seed.
  (input, rng, seeds) => {
    const other = rng.pick(seeds);
    return concat(
      input.subarray(0, rng.int(input.length + 1)),
      other.subarray(rng.int(other.length + 1)),
    );
  },
  // A 32-bit little- or big-endian interesting value anywhere.
  (input, rng) => {
    const out = copy(input);
    if (out.length < 4) return out;
    const view = new DataView(out.buffer);
    view.setUint32(rng.int(out.length - 3), rng.pick(INTERESTING_U32), rng.next() < 0.5);
    return out;
  },
];

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** One mutated input: 1 to 3 mutations, structure-aware ones half of the time. */
export function mutate(target: FuzzTarget, rng: Prng): Uint8Array {
  let input = rng.pick(target.seeds);
  for (let k = 1 + rng.int(3); k > 0; k--) {
    if (target.mutators.length > 0 && rng.next() < 0.5)
      input = rng.pick(target.mutators)(input, rng);
    else input = rng.pick(byteMutators)(input, rng, target.seeds);
  }
  return input;
}

// ---------------------------------------------------------------- frames and tensors

/** Values a header field gets: wrong types, edges, huge, negative, absent. */
function oddValue(rng: Prng): unknown {
  return rng.pick<unknown>([
    undefined,
    null,
    0,
    -1,
    1.5,
    2 ** 31,
    2 ** 32,
    2 ** 53,
    Number.MAX_VALUE,
    1e308,
    "",
    "x",
    "f32",
    "u8q",
    "f16",
    "deflate",
    "sparse",
    "none",
    [],
    [0],
    [1, 0],
    [-1, 4],
    [65_536, 65_536],
    [2 ** 31, 2 ** 31],
    [1, 32, 7, 7],
    [1, 1568],
    [1, 1, 1, 1, 1, 1, 1, 1, 1],
    {},
    { a: 1 },
    true,
  ]);
}

function withHeader(input: Uint8Array, edit: (h: Record<string, unknown>) => void): Uint8Array {
  try {
    const { header, body } = decodeFrame(input);
    edit(header);
    return encodeFrame(header, body);
  } catch {
    return input;
  }
}

const frameMutators: FuzzTarget["mutators"] = [
  // The header length field (bytes 4..7).
  (input, rng) => {
    const out = copy(input);
    if (out.length >= 8) {
      const view = new DataView(out.buffer);
      const h = view.getUint32(4, true);
      view.setUint32(
        4,
        rng.pick([...INTERESTING_U32, h - 1, h + 1, out.length - 8, out.length - 7, h * 2]) >>> 0,
        true,
      );
    }
    return out;
  },
  // One header field set to an odd value.
  (input, rng) =>
    withHeader(input, (h) => {
      const keys = [
        "kind",
        "id",
        "model",
        "digest",
        "stage",
        "replyTo",
        "deadline",
        "dtype",
        "shape",
        "scale",
        "zero",
        "compression",
        "sentAt",
        "timings",
        "probe",
        "status",
        "label",
        "entropy",
        "error",
        "exits",
      ];
      h[rng.pick(keys)] = oddValue(rng);
    }),
  // The body re-encoded under another dtype or compression, or another shape for the same body.
  (input, rng) =>
    withHeader(input, (h) => {
      h.dtype = rng.pick(["f32", "f16", "u8q"]);
      h.compression = rng.pick(["none", "deflate", "sparse"]);
      if (rng.next() < 0.5 && Array.isArray(h.shape))
        h.shape = (h.shape as unknown[]).map((d) =>
          typeof d === "number" ? d * rng.pick([0, 1, 2, 4096]) : d,
        );
    }),
  // A deflated body replaced by a small bomb or by garbage that starts like zlib.
  (input, rng) => {
    try {
      const { header } = decodeFrame(input);
      header.compression = "deflate";
      const body =
        rng.next() < 0.5
          ? new Uint8Array(gzipSync(new Uint8Array(1 << 20)).subarray(10))
          : Uint8Array.from([0x78, 0x9c, ...Array.from({ length: 64 }, () => rng.int(256))]);
      return encodeFrame(header, body);
    } catch {
      return input;
    }
  },
];

/** Most elements a tensor may claim (the server's limit is the model's size, at most its frame limit). */
export const FUZZ_MAX_ELEMENTS = 1 << 20;

export interface FrameSeeds {
  readonly requests: readonly Uint8Array[];
  readonly results: readonly Uint8Array[];
}

/**
 * Real frames: the device features of `fashion-deep` (from models/, run by its own device stage)
 * encoded in every dtype and compression the protocol has, and replies like the server's.
 */
export function frameSeeds(features: readonly Float32Array[], dims: readonly number[]): FrameSeeds {
  const requests: Uint8Array[] = [];
  features.forEach((data, i) => {
    for (const dtype of ["f32", "f16", "u8q"] as const)
      for (const compression of ["none", "deflate", "sparse"] as const) {
        const { fields, body } = encodeTensor(data, dims, { dtype, compression });
        requests.push(
          encodeFrame(
            {
              kind: "infer",
              id: `cam-0a1b2c3d-${i}`,
              model: "default/fashion-deep",
              digest: "0".repeat(64),
              stage: 1,
              replyTo: "ddnn/default/fashion-deep/reply/cam",
              deadline: 1_900_000_000_000,
              sentAt: 1_899_999_999_000,
              ...fields,
            },
            body,
          ),
        );
      }
  });
  const results = [
    encodeFrame({
      kind: "result",
      id: "cam-1",
      status: "ok",
      stage: 1,
      label: 3,
      entropy: 0.12,
      timings: { server: 0.4, serverQueue: 0.1 },
    }),
    encodeFrame({
      kind: "result",
      id: "cam-2",
      status: "ok",
      stage: 1,
      label: 0,
      entropy: 0.5,
      timings: {},
      exits: [
        { stage: 0, label: 1, entropy: 0.7 },
        { stage: 1, label: 0, entropy: 0.5 },
      ],
    }),
    encodeFrame({
      kind: "result",
      id: "cam-3",
      status: "error",
      error: { code: "deadline_exceeded", message: "the deadline passed in the queue" },
    }),
  ];
  return { requests, results };
}

/** Device features of `n` evaluation images, from models/fashion-deep's own device stage. */
export async function realFeatures(
  n: number,
): Promise<{ features: Float32Array[]; dims: number[] }> {
  const root = packageRoot();
  const pipeline = await Pipeline.load(join(root, "models", "fashion-deep"));
  try {
    const images = await readIdx(
      join(root, "models", "eval", "fashion-mnist-t10k-2000-images-idx3-ubyte.gz"),
    );
    const per = images.data.length / (images.shape[0] ?? 1);
    const never = new ExitPolicy(
      pipeline.policy.thresholds.map((t) => (t === undefined ? undefined : 0)),
    );
    const ran = await pipeline.runRange(
      0,
      0,
      pipeline.inputTensor(images.data.subarray(0, n * per), n),
      never,
    );
    const features: Float32Array[] = [];
    let dims: number[] = [];
    for (const r of ran) {
      if (!isForward(r)) throw new Error("the device stage exited with threshold 0");
      features.push(r.forward.features);
      dims = [...r.forward.dims];
    }
    return { features, dims };
  } finally {
    await pipeline.release();
  }
}

/** The server's path for a request frame: decodeRequest, then decodeTensor on its header. */
export function frameTarget(seeds: FrameSeeds): FuzzTarget {
  return {
    name: "frame (decodeRequest + decodeTensor)",
    allowed: [FrameError],
    seeds: seeds.requests,
    mutators: frameMutators,
    run(input) {
      const { header, body } = decodeRequest(input);
      return decodeTensor(header, body, FUZZ_MAX_ELEMENTS);
    },
  };
}

/** The device's path for a reply frame. */
export function resultTarget(seeds: FrameSeeds): FuzzTarget {
  return {
    name: "reply (decodeResult)",
    allowed: [FrameError],
    seeds: [...seeds.results, ...seeds.requests.slice(0, 2)],
    mutators: frameMutators,
    run: (input) => decodeResult(input),
  };
}

/**
 * decodeTensor alone, on any header fields the schema lets through (as a gateway or a reply with a
 * tensor would hand it): the input is a frame whose header carries the fields.
 */
export function tensorTarget(seeds: FrameSeeds): FuzzTarget {
  return {
    name: "tensor (decodeTensor)",
    allowed: [FrameError],
    seeds: seeds.requests,
    mutators: frameMutators,
    run(input) {
      const { header, body } = decodeFrame(input);
      const fields = tensorHeaderSchema.safeParse(header);
      if (!fields.success) throw new FrameError("bad_frame", "fields do not parse");
      return decodeTensor(fields.data, body, FUZZ_MAX_ELEMENTS);
    },
  };
}

// ---------------------------------------------------------------- bundles

function octal(n: number, width: number): string {
  return `${n.toString(8).padStart(width - 1, "0")}\0`;
}

/** Recomputes a tar header's checksum so that an edit of the header is read, not refused. */
function fixChecksum(tar: Uint8Array, at: number): void {
  const h = tar.subarray(at, at + 512);
  if (h.length < 512) return;
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.set(new TextEncoder().encode(octal(sum, 7)), 148);
  h[155] = 0x20;
}

/** Offsets of the tar headers in an uncompressed archive (walking the size fields). */
function headerOffsets(tar: Uint8Array): number[] {
  const out: number[] = [];
  let at = 0;
  while (at + 512 <= tar.length && out.length < 64) {
    const h = tar.subarray(at, at + 512);
    if (h.every((b) => b === 0)) break;
    out.push(at);
    const text = new TextDecoder().decode(h.subarray(124, 136)).replace(/\0.*$/s, "").trim();
    const size = Number.parseInt(text || "0", 8);
    if (!Number.isSafeInteger(size) || size < 0) break;
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

function isGzip(b: Uint8Array): boolean {
  return b[0] === 0x1f && b[1] === 0x8b;
}

/** A tar-level edit of a (gzipped or not) archive; the result is uncompressed or gzipped again. */
function tarEdit(edit: (tar: Uint8Array, headers: number[], rng: Prng) => Uint8Array) {
  return (input: Uint8Array, rng: Prng): Uint8Array => {
    let tar: Uint8Array;
    try {
      tar = isGzip(input) ? new Uint8Array(gunzipSync(input)) : copy(input);
    } catch {
      return input;
    }
    const out = edit(tar, headerOffsets(tar), rng);
    return rng.next() < 0.2 ? new Uint8Array(gzipSync(out, { level: 1 })) : out;
  };
}

const bundleMutators: FuzzTarget["mutators"] = [
  // A size field set to an interesting value (0, huge, past the end), checksum fixed up or not.
  tarEdit((tar, headers, rng) => {
    if (headers.length === 0) return tar;
    const at = rng.pick(headers);
    const size = rng.pick([
      0,
      1,
      511,
      512,
      513,
      2 ** 20,
      2 ** 28,
      2 ** 32,
      8 ** 11 - 1,
      tar.length,
    ]);
    const field =
      rng.next() < 0.8
        ? octal(size, 12)
        : rng.pick(["", "-1", "zzzzzzzzzzz", "1e9", " 777 ", "\u0080\u0080"]);
    tar.fill(0, at + 124, at + 136);
    tar.set(new TextEncoder().encode(field).subarray(0, 12), at + 124);
    if (rng.next() < 0.8) fixChecksum(tar, at);
    return tar;
  }),
  // The type flag, the name, the ustar prefix or magic of one entry (checksum fixed up).
  tarEdit((tar, headers, rng) => {
    if (headers.length === 0) return tar;
    const at = rng.pick(headers);
    switch (rng.int(4)) {
      case 0:
        tar[at + 156] = rng.pick([0x30, 0x00, 0x4c, 0x78, 0x67, 0x35, 0x32, 0x31, 0x53, 0xff]);
        break;
      case 1: {
        const name = rng.pick([
          "ddnn.json",
          "./ddnn.json",
          "a/ddnn.json",
          "../ddnn.json",
          "/etc/passwd",
          "",
          "x".repeat(100),
          "device.onnx",
        ]);
        tar.fill(0, at, at + 100);
        tar.set(new TextEncoder().encode(name).subarray(0, 100), at);
        break;
      }
      case 2:
        tar.set(
          new TextEncoder().encode(rng.pick(["ustar\0", "ustar ", "\0\0\0\0\0\0"])),
          at + 257,
        );
        break;
      default:
        tar.fill(rng.pick([0, 0x61, 0x2f]), at + 345, at + 345 + rng.int(155));
    }
    fixChecksum(tar, at);
    return tar;
  }),
  // ddnn.json edited as JSON: a field removed or set to an odd value (the tar entry re-sized).
  tarEdit((tar, headers, rng) => {
    for (const at of headers) {
      const name = new TextDecoder().decode(tar.subarray(at, at + 100)).replace(/\0.*$/s, "");
      if (!name.endsWith("ddnn.json")) continue;
      const sizeText = new TextDecoder()
        .decode(tar.subarray(at + 124, at + 136))
        .replace(/\0.*$/s, "")
        .trim();
      const size = Number.parseInt(sizeText || "0", 8);
      let manifest: Record<string, unknown>;
      try {
        manifest = JSON.parse(
          new TextDecoder().decode(tar.subarray(at + 512, at + 512 + size)),
        ) as Record<string, unknown>;
      } catch {
        return tar;
      }
      if (typeof manifest !== "object" || manifest === null) return tar;
      // Stages that are objects (an earlier mutation may have made one null).
      const stages = Array.isArray(manifest.stages)
        ? (manifest.stages as unknown[]).filter(
            (x): x is Record<string, unknown> => typeof x === "object" && x !== null,
          )
        : [];
      const holder: Record<string, unknown> =
        rng.next() < 0.5 && stages.length > 0
          ? rng.pick(stages)
          : rng.next() < 0.5 && typeof manifest.input === "object" && manifest.input
            ? (manifest.input as Record<string, unknown>)
            : manifest;
      const keys = Object.keys(holder);
      const key = rng.next() < 0.9 && keys.length > 0 ? rng.pick(keys) : "extra";
      if (rng.next() < 0.3) delete holder[key];
      else holder[key] = oddValue(rng);
      const body = new TextEncoder().encode(JSON.stringify(manifest));
      const header = tar.slice(at, at + 512);
      header.fill(0, 124, 136);
      header.set(new TextEncoder().encode(octal(body.length, 12)), 124);
      fixChecksum(header, 0);
      const pad = new Uint8Array((512 - (body.length % 512)) % 512);
      return concat(
        tar.subarray(0, at),
        header,
        body,
        pad,
        tar.subarray(at + 512 + Math.ceil(size / 512) * 512),
      );
    }
    return tar;
  }),
];

/** Real bundles from models/, packed as `ddnn bundle pack` packs them. */
export async function bundleSeeds(
  names: readonly string[] = ["fashion-deep", "fashion-shallow"],
): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for (const name of names) {
    const bundle = await readBundle(join(packageRoot(), "models", name));
    const packed = packReproducibly(bundleFiles(bundle));
    out.push(packed);
    // The uncompressed tar too: the loader takes both, and tar-level mutations start from it.
    out.push(new Uint8Array(gunzipSync(packed)));
  }
  return out;
}

export function bundleTarget(seeds: readonly Uint8Array[]): FuzzTarget {
  return {
    name: "bundle (readBundleArchive)",
    allowed: [BundleError],
    seeds,
    mutators: bundleMutators,
    run: (input) => readBundleArchive(input, "fuzz.tar.gz"),
  };
}

// ---------------------------------------------------------------- the loop

export interface FuzzOptions {
  readonly seed: number;
  /** Stop after this long (ms) per target... */
  readonly msPerTarget: number;
  /** ...or after this many inputs per target, whichever comes first. */
  readonly maxInputs?: number;
  /** An input taking longer than this is a finding (a hang in the making). */
  readonly slowMs?: number;
  /** One input making the heap and array buffers grow by more than this is a finding. */
  readonly maxInputBytes?: number;
  /** Resident memory above the start by more than this is a finding (a leak across inputs). */
  readonly maxGrowthBytes?: number;
}

/** Runs one input against a target; a finding, or undefined when the property held. */
export async function check(
  target: FuzzTarget,
  input: Uint8Array,
  slowMs: number,
): Promise<{ finding?: Finding; ms: number; error?: Error; allocated: number }> {
  const before = allocatedBytes();
  const t0 = performance.now();
  let error: Error | undefined;
  try {
    const out = target.run(input);
    if (out instanceof Promise) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        out,
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new HangError(slowMs * 10)), slowMs * 10);
        }),
      ]).finally(() => clearTimeout(timer));
    }
  } catch (err) {
    error = err instanceof Error ? err : new Error(String(err));
  }
  const ms = performance.now() - t0;
  // Garbage is not collected in between, so this is what the input allocated (at least).
  const allocated = allocatedBytes() - before;
  const result = classify(target, input, slowMs, ms, error);
  return { ...result, allocated };
}

function allocatedBytes(): number {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

function classify(
  target: FuzzTarget,
  input: Uint8Array,
  slowMs: number,
  ms: number,
  error: Error | undefined,
): { finding?: Finding; ms: number; error?: Error } {
  if (error instanceof HangError)
    return { ms, finding: { target: target.name, kind: "slow", detail: error.message, input } };
  if (error && !target.allowed.some((E) => error instanceof E))
    return {
      ms,
      error,
      finding: {
        target: target.name,
        kind: "crash",
        detail: `${error.name}: ${error.message}\n${error.stack ?? ""}`,
        input,
      },
    };
  if (ms > slowMs)
    return {
      ms,
      finding: { target: target.name, kind: "slow", detail: `took ${ms.toFixed(0)} ms`, input },
    };
  return error ? { ms, error } : { ms };
}

class HangError extends Error {
  constructor(ms: number) {
    super(`did not settle within ${ms} ms`);
    this.name = "HangError";
  }
}

/** Mutates and runs inputs against each target in turn; returns the stats and every finding. */
export async function fuzz(
  targets: readonly FuzzTarget[],
  o: FuzzOptions,
): Promise<{ stats: TargetStats[]; findings: Finding[] }> {
  const rng = new Prng(o.seed);
  const slowMs = o.slowMs ?? 1000;
  const maxGrowth = o.maxGrowthBytes ?? 2 * 1024 ** 3;
  const maxInput = o.maxInputBytes ?? 128 * 1024 ** 2;
  const findings: Finding[] = [];
  const stats: TargetStats[] = [];
  const rss0 = process.memoryUsage.rss();
  for (const target of targets) {
    const s: TargetStats = {
      target: target.name,
      inputs: 0,
      accepted: 0,
      errors: new Map(),
      maxMs: 0,
      totalMs: 0,
    };
    stats.push(s);
    const until = performance.now() + o.msPerTarget;
    while (performance.now() < until && s.inputs < (o.maxInputs ?? Number.POSITIVE_INFINITY)) {
      // Seeds themselves first: they must pass.
      const input = s.inputs < target.seeds.length ? target.seeds[s.inputs]! : mutate(target, rng);
      const r = await check(target, input, slowMs);
      s.inputs++;
      s.totalMs += r.ms;
      s.maxMs = Math.max(s.maxMs, r.ms);
      if (r.finding) findings.push(r.finding);
      else if (r.error) {
        const key = r.error.message.replace(/\d+/g, "N").slice(0, 90);
        s.errors.set(key, (s.errors.get(key) ?? 0) + 1);
      } else s.accepted++;
      if (r.allocated > maxInput)
        findings.push({
          target: target.name,
          kind: "memory",
          detail: `one input allocated ${(r.allocated / 2 ** 20).toFixed(0)} MiB`,
          input,
        });
      if (s.inputs % 256 === 0 && process.memoryUsage.rss() - rss0 > maxGrowth)
        findings.push({
          target: target.name,
          kind: "memory",
          detail: `resident memory grew by ${((process.memoryUsage.rss() - rss0) / 2 ** 20).toFixed(0)} MiB`,
          input,
        });
      if (findings.length >= 20) return { stats, findings };
    }
  }
  return { stats, findings };
}

/** The fixtures of test/fixtures/fuzz/: <target prefix>-<name>.bin, replayed by the test. */
export const FIXTURE_PREFIX: Readonly<Record<string, string>> = {
  "frame (decodeRequest + decodeTensor)": "frame",
  "reply (decodeResult)": "reply",
  "tensor (decodeTensor)": "tensor",
  "bundle (readBundleArchive)": "bundle",
};

/** Reads a file as bytes (a fixture). */
export function readBytes(path: string): Uint8Array {
  const b = readFileSync(path);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}
