import { readFileSync } from "node:fs";
import { createGzip, gzipSync } from "node:zlib";
import { beforeAll, describe, expect, it } from "vitest";
import { packBundle, smallStages, writeBundle } from "../../test/support/bundle-fixture.js";
import { readBundle, readBundleArchive } from "./read.js";

const MiB = 1024 * 1024;

/** A ustar header for a regular file of `size` bytes (the body is the caller's). */
function tarHeader(name: string, size: number): Uint8Array {
  const h = new Uint8Array(512);
  const put = (at: number, text: string) => h.set(new TextEncoder().encode(text), at);
  put(0, name);
  put(100, "0000644\0");
  put(108, "0000000\0");
  put(116, "0000000\0");
  put(124, `${size.toString(8).padStart(11, "0")}\0`);
  put(136, "00000000000\0");
  put(156, "0");
  put(257, "ustar\0");
  put(263, "00");
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : (h[i] ?? 0);
  put(148, `${sum.toString(8).padStart(6, "0")}\0 `);
  return h;
}

/** Gzips `total` bytes of zeros, after `head`, by streaming (nothing large is ever held). */
async function gzipZeros(total: number, head: Uint8Array = new Uint8Array(0)): Promise<Buffer> {
  const gz = createGzip({ level: 9 });
  const out: Buffer[] = [];
  gz.on("data", (c: Buffer) => out.push(c));
  const ended = new Promise((r) => gz.on("end", r));
  const zeros = Buffer.alloc(MiB);
  if (head.length > 0) gz.write(head);
  for (let left = total; left > 0; left -= zeros.length) {
    if (!gz.write(left >= zeros.length ? zeros : zeros.subarray(0, left)))
      await new Promise((r) => gz.once("drain", r));
  }
  gz.end();
  await ended;
  return Buffer.concat(out);
}

describe("unpacking an archive in bounded memory", () => {
  let bomb: Buffer;
  beforeAll(async () => {
    // 1 GiB of zeros: about 1 MiB of gzip.
    bomb = await gzipZeros(1024 * MiB);
  }, 60_000);

  it("refuses a gzip bomb at the unpack cap, quickly, without holding what it unpacked or blocking the event loop", async () => {
    expect(bomb.length).toBeLessThan(2 * MiB);
    global.gc?.();
    const before = process.memoryUsage();
    let peakRss = before.rss;
    let peakArrayBuffers = before.arrayBuffers;
    const ticks: number[] = [];
    const timer = setInterval(() => {
      ticks.push(performance.now());
      const m = process.memoryUsage();
      peakRss = Math.max(peakRss, m.rss);
      peakArrayBuffers = Math.max(peakArrayBuffers, m.arrayBuffers);
    }, 5);
    const started = performance.now();
    let error: unknown;
    try {
      await readBundleArchive(bomb, "bomb.tar.gz");
    } catch (err) {
      error = err;
    } finally {
      clearInterval(timer);
    }
    const ms = performance.now() - started;
    const after = process.memoryUsage();
    peakRss = Math.max(peakRss, after.rss);
    peakArrayBuffers = Math.max(peakArrayBuffers, after.arrayBuffers);
    const growth = {
      rss: peakRss - before.rss,
      arrayBuffers: peakArrayBuffers - before.arrayBuffers,
    };
    console.log(
      `bomb: ${bomb.length} bytes gzip (1 GiB unpacked), refused in ${ms.toFixed(0)} ms; ` +
        `peak growth rss ${(growth.rss / MiB).toFixed(1)} MiB, arrayBuffers ${(growth.arrayBuffers / MiB).toFixed(1)} MiB; ` +
        `${ticks.length} timer ticks, longest gap ${maxGap(started, ticks, started + ms).toFixed(0)} ms`,
    );
    expect.soft(String(error)).toMatch(/bomb\.tar\.gz: unpacks to more than 256 MiB/);
    expect.soft(ms).toBeLessThan(10_000);
    // The cap is 256 MiB; what was unpacked past the tar's end is not kept (what grows is
    // zlib's output not yet collected).
    expect.soft(growth.rss).toBeLessThan(128 * MiB);
    expect.soft(growth.arrayBuffers).toBeLessThan(64 * MiB);
    // A timer scheduled during the read fires during it, and often.
    expect.soft(ticks.length).toBeGreaterThan(5);
    expect.soft(maxGap(started, ticks, started + ms)).toBeLessThan(250);
  });

  it("stops a tar of many entries as soon as the caller's cap is passed", async () => {
    const head = tarHeader("ddnn.json", 8 * MiB);
    // 64 entries of 1 MiB zeros each (64 MiB unpacked), against an 8 MiB cap.
    const parts: Uint8Array[] = [];
    for (let i = 0; i < 64; i++) parts.push(tarHeader(`part-${i}.onnx`, MiB), new Uint8Array(MiB));
    const archive = gzipSync(Buffer.concat(parts));
    await expect(
      readBundleArchive(archive, "many.tar.gz", { maxUnpackedBytes: 8 * MiB }),
    ).rejects.toThrow(/many\.tar\.gz: unpacks to more than 8 MiB/);
    // An entry whose header alone says it is past the cap is refused at its header.
    const declared = Buffer.concat([head, new Uint8Array(1024)]);
    await expect(
      readBundleArchive(gzipSync(declared), "declared.tar.gz", { maxUnpackedBytes: 4 * MiB }),
    ).rejects.toThrow(
      /declared\.tar\.gz: unpacks to more than 4 MiB, .*ddnn\.json at byte 0 declares 8388608 bytes/,
    );
  });

  it("reads a real bundle under the default cap and refuses it under a cap smaller than it", async () => {
    const f = writeBundle(smallStages());
    const archive = packBundle(f.dir);
    const direct = await readBundle(f.dir);
    const fromArchive = await readBundle(archive);
    expect(fromArchive.digest).toBe(direct.digest);
    const bytes = readFileSync(archive);
    await expect(
      readBundleArchive(bytes, "small.tar.gz", { maxUnpackedBytes: 1024 }),
    ).rejects.toThrow(/small\.tar\.gz: unpacks to more than 1024 bytes/);
    await expect(readBundle(archive, { maxUnpackedBytes: 1024 })).rejects.toThrow(
      /bundle\.tar\.gz: unpacks to more than 1024 bytes/,
    );
  });

  it("refuses a truncated entry and a gzip stream cut short, naming the archive", async () => {
    const cut = Buffer.concat([tarHeader("ddnn.json", 4096), new Uint8Array(100)]);
    await expect(readBundleArchive(gzipSync(cut), "cut.tar.gz")).rejects.toThrow(
      /cut\.tar\.gz: tar entry at byte 0 is truncated/,
    );
    const gz = gzipSync(Buffer.concat([tarHeader("ddnn.json", 4096), new Uint8Array(4096)]));
    await expect(readBundleArchive(gz.subarray(0, gz.length - 10), "short.tar.gz")).rejects.toThrow(
      /short\.tar\.gz: not a readable gzip archive/,
    );
  });
});

/** The longest time between two ticks, counting from the start to the first and the last to the end. */
function maxGap(start: number, ticks: number[], end: number): number {
  let last = start;
  let gap = 0;
  for (const t of [...ticks, end]) {
    gap = Math.max(gap, t - last);
    last = t;
  }
  return gap;
}
