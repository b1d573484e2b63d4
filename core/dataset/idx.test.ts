import { gzipSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { encodeIdx, parseIdx } from "./idx.js";

describe("idx", () => {
  const data = Uint8Array.from({ length: 2 * 3 * 4 }, (_, i) => i);

  it("round-trips raw and gzipped files of any rank", () => {
    const raw = encodeIdx([2, 3, 4], data);
    for (const bytes of [raw, new Uint8Array(gzipSync(raw))]) {
      const idx = parseIdx(bytes);
      expect(idx.shape).toEqual([2, 3, 4]);
      expect(Array.from(idx.data)).toEqual(Array.from(data));
    }
  });

  it("names what is wrong with a bad file", () => {
    expect(() => parseIdx(Uint8Array.from([1, 2, 3, 4]), "x.idx")).toThrow(
      /x.idx: not an idx file/,
    );
    const floats = encodeIdx([1], Uint8Array.of(0, 0, 0, 0));
    floats[2] = 0x0d;
    expect(() => parseIdx(floats, "f.idx")).toThrow(/element type 0xd is not supported/);
    expect(() => parseIdx(encodeIdx([2, 3, 4], data).subarray(0, 20), "t.idx")).toThrow(
      /t.idx: idx body holds/,
    );
  });
});
