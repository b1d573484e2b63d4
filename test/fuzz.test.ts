/**
 * Bounded-time fuzzing of what the fog reads from outside (bench/support/fuzz.ts): the DDN1 frame
 * decoder, the tensor decoder and the bundle loader, from real frames and real bundles, with
 * random and mutated inputs. Each input either decodes or throws the decoder's documented error
 * (FrameError, BundleError), quickly, without the process growing. The seed is printed; set
 * DDNN_FUZZ_SEED to replay a run, DDNN_FUZZ_MS for a longer one. Every file of
 * test/fixtures/fuzz/ (inputs that once broke a decoder, and hand-made worst cases) is replayed.
 */
import { mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { beforeAll, describe, expect, it } from "vitest";
import {
  bundleSeeds,
  bundleTarget,
  check,
  FIXTURE_PREFIX,
  type FrameSeeds,
  type FuzzTarget,
  frameSeeds,
  frameTarget,
  fuzz,
  readBytes,
  realFeatures,
  resultTarget,
  tensorTarget,
} from "../bench/support/fuzz.js";
import { BundleError } from "../core/bundle/manifest.js";
import { readBundleArchive } from "../core/bundle/read.js";
import { decodeRequest, encodeFrame, FrameError } from "../core/wire/frame.js";
import { decodeTensor } from "../core/wire/tensor.js";
import { root } from "./support/run.js";

const FIXTURES = join(root, "test", "fixtures", "fuzz");
const SEED = Number(process.env.DDNN_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 32));
/** Per target; four targets. */
const MS = Number(process.env.DDNN_FUZZ_MS ?? 3000);

let frames: FrameSeeds;
let targets: FuzzTarget[];

beforeAll(async () => {
  const { features, dims } = await realFeatures(4);
  frames = frameSeeds(features, dims);
  targets = [
    frameTarget(frames),
    tensorTarget(frames),
    resultTarget(frames),
    bundleTarget(await bundleSeeds()),
  ];
});

describe("fuzzing the decoders", () => {
  it(`mutated frames, tensors and bundles only ever get the documented errors (seed printed; DDNN_FUZZ_SEED replays)`, async () => {
    console.info(
      `fuzz: seed ${SEED} (DDNN_FUZZ_SEED=${SEED} replays this run), ${MS} ms per target`,
    );
    const { stats, findings } = await fuzz(targets, { seed: SEED, msPerTarget: MS, slowMs: 2000 });
    console.info(
      `fuzz: ${stats
        .map(
          (s) =>
            `${s.target}: ${s.inputs} inputs (${((s.inputs * 1000) / s.totalMs).toFixed(0)}/s), ${s.accepted} accepted, ${s.errors.size} distinct errors, slowest ${s.maxMs.toFixed(1)} ms`,
        )
        .join("; ")}`,
    );
    if (findings.length > 0) {
      // Kept for a regression case: copy one into test/fixtures/fuzz/ once it is fixed.
      const dir = mkdtempSync(join(tmpdir(), "ddnn-fuzz-findings-"));
      findings.forEach((f, n) => {
        writeFileSync(
          join(dir, `${FIXTURE_PREFIX[f.target] ?? "unknown"}-${f.kind}-${SEED}-${n}.bin`),
          f.input,
        );
      });
      console.error(`fuzz: ${findings.length} findings written to ${dir}`);
    }
    expect(
      findings.map(
        (f) =>
          `${f.target} ${f.kind}: ${f.detail.split("\n")[0]} (input ${Buffer.from(f.input.subarray(0, 64)).toString("hex")}...)`,
      ),
    ).toEqual([]);
    for (const s of stats) {
      // Enough inputs to mean something, and the mutations reach past the first check.
      expect(s.inputs, s.target).toBeGreaterThan(50);
      expect(s.errors.size, s.target).toBeGreaterThan(3);
      // The seeds are real, valid inputs.
      expect(s.accepted, s.target).toBeGreaterThan(0);
    }
  });

  it("the property catches what it should: an undocumented error, a slow input, a promise that never settles", async () => {
    const target = (run: FuzzTarget["run"]): FuzzTarget => ({
      name: "probe",
      allowed: [FrameError],
      seeds: [new Uint8Array(1)],
      mutators: [],
      run,
    });
    const input = new Uint8Array(1);
    const documented = await check(
      target(() => {
        throw new FrameError("bad_frame", "x");
      }),
      input,
      100,
    );
    expect(documented.finding).toBeUndefined();
    const crash = await check(
      target((b) => b.subarray(0)[5]!.toFixed()),
      input,
      100,
    );
    expect(crash.finding?.kind).toBe("crash");
    const slow = await check(
      target(() => {
        const until = performance.now() + 150;
        while (performance.now() < until);
      }),
      input,
      100,
    );
    expect(slow.finding?.kind).toBe("slow");
    const hang = await check(
      target(() => new Promise(() => {})),
      input,
      20,
    );
    expect(hang.finding?.kind).toBe("slow");
  });

  it("replays every regression case in test/fixtures/fuzz/", async () => {
    const files = readdirSync(FIXTURES).filter((f) => f.endsWith(".bin"));
    expect(files.length).toBeGreaterThan(0);
    const byPrefix = new Map(targets.map((t) => [FIXTURE_PREFIX[t.name] ?? t.name, t] as const));
    for (const file of files) {
      const target = byPrefix.get(file.split("-")[0]!);
      expect(target, `${file}: no target for its prefix`).toBeDefined();
      const r = await check(target!, readBytes(join(FIXTURES, file)), 1000);
      expect(r.finding?.detail, file).toBeUndefined();
    }
  });

  it("length fields claiming gigabytes are refused before anything is allocated", async () => {
    const rss0 = process.memoryUsage.rss();
    // A header length of 4 GiB - 1.
    const frame = Uint8Array.from([...Buffer.from("DDN1"), 0xff, 0xff, 0xff, 0xff, 0x7b, 0x7d]);
    expect(() => decodeRequest(frame)).toThrow(FrameError);
    // A shape of 2^31 x 2^31 elements, with an empty body and with a deflated one.
    const { header, body } = decodeRequest(frames.requests[0]!);
    for (const compression of ["none", "deflate"] as const)
      expect(() =>
        decodeTensor({ ...header, shape: [2 ** 31, 2 ** 31], compression }, body, 1 << 20),
      ).toThrow(/over the limit/);
    // A deflated body that inflates to 1 GiB for a tensor of 1,568 floats.
    const bomb = decodeRequest(
      encodeFrame(
        { ...header, compression: "deflate", dtype: "f32" },
        gzipSync(Buffer.alloc(64 << 20)).subarray(10),
      ),
    );
    expect(() => decodeTensor(bomb.header, bomb.body, 1 << 20)).toThrow(FrameError);
    // A tar entry whose size field says 8 GiB.
    const tar = new Uint8Array(1536);
    tar.set(new TextEncoder().encode("ddnn.json"), 0);
    tar.set(new TextEncoder().encode("77777777777\0"), 124);
    tar[156] = 0x30;
    tar.fill(0x20, 148, 156);
    const sum = tar.subarray(0, 512).reduce((a, b) => a + b, 0);
    tar.set(new TextEncoder().encode(`${sum.toString(8).padStart(6, "0")}\0 `), 148);
    await expect(readBundleArchive(tar, "huge.tar")).rejects.toThrow(BundleError);
    await expect(readBundleArchive(tar, "huge.tar")).rejects.toThrow(/declares 8589934591 bytes/);
    expect(process.memoryUsage.rss() - rss0).toBeLessThan(256 * 2 ** 20);
  });
});
