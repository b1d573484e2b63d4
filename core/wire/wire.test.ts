import { deflateSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { decodeFrame, decodeRequest, decodeResult, encodeFrame, FrameError } from "./frame.js";
import { fromHalf, toHalf } from "./half.js";
import {
  decodeTensor,
  encodeTensor,
  sparseDecode,
  sparseEncode,
  type TensorFields,
} from "./tensor.js";

const digest = "a".repeat(64);
const request = (extra: Record<string, unknown> = {}) => ({
  kind: "infer",
  id: "r1",
  model: "fog/fashion",
  digest,
  stage: 1,
  replyTo: "ddnn/fog/fashion/reply/cam-1",
  deadline: 1,
  dtype: "f32",
  shape: [1, 2],
  compression: "none",
  sentAt: 0,
  ...extra,
});

describe("DDN1 frames", () => {
  it("round-trips header and body, byte layout as in the contract", () => {
    const body = Uint8Array.of(1, 2, 3);
    const frame = encodeFrame({ kind: "infer", x: "é" }, body);
    expect(new TextDecoder().decode(frame.subarray(0, 4))).toBe("DDN1");
    const h = new DataView(frame.buffer).getUint32(4, true);
    expect(JSON.parse(new TextDecoder().decode(frame.subarray(8, 8 + h)))).toEqual({
      kind: "infer",
      x: "é",
    });
    const back = decodeFrame(frame);
    expect(back.header).toEqual({ kind: "infer", x: "é" });
    expect(Array.from(back.body)).toEqual([1, 2, 3]);
  });

  it("refuses malformed frames with bad_frame", () => {
    const good = encodeFrame(request());
    const cases: [Uint8Array, RegExp][] = [
      [Uint8Array.of(1, 2, 3), /shorter than the 8-byte prefix/],
      [
        Uint8Array.from([...good.subarray(0, 3), 0x32, ...good.subarray(4)]),
        /does not start with "DDN1"/,
      ],
      [good.subarray(0, 20), /runs past the end/],
      [encodeFrame([1, 2] as unknown as object), /not a JSON object/],
      [Uint8Array.from([...good.subarray(0, 8), 0xff, ...good.subarray(9)]), /not UTF-8 JSON/],
    ];
    for (const [frame, message] of cases) {
      expect(() => decodeFrame(frame)).toThrow(message);
    }
    const huge = new Uint8Array(16);
    huge.set(new TextEncoder().encode("DDN1"));
    new DataView(huge.buffer).setUint32(4, 1 << 30, true);
    expect(() => decodeFrame(huge)).toThrow(/exceeds/);
  });

  it("validates request headers and keeps id and replyTo for the error reply", () => {
    expect(decodeRequest(encodeFrame(request({ extra: 1 }))).header.extra).toBe(1);
    try {
      decodeRequest(encodeFrame(request({ dtype: "f64" })));
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(FrameError);
      const e = err as FrameError;
      expect(e.code).toBe("bad_frame");
      expect(e.message).toMatch(/header field dtype/);
      expect(e.id).toBe("r1");
      expect(e.replyTo).toBe("ddnn/fog/fashion/reply/cam-1");
    }
    expect(() => decodeRequest(encodeFrame(request({ digest: "x" })))).toThrow(/digest/);
    expect(() => decodeRequest(encodeFrame(request({ replyTo: "a/+/b" })))).toThrow(/wildcards/);
  });

  it("parses ok and error results", () => {
    const ok = decodeResult(
      encodeFrame({
        kind: "result",
        id: "1",
        status: "ok",
        stage: 1,
        label: 3,
        entropy: 0.2,
        timings: { server: 1 },
      }),
    );
    expect(ok.header.status).toBe("ok");
    const err = decodeResult(
      encodeFrame({
        kind: "result",
        id: "1",
        status: "error",
        error: { code: "overloaded", message: "queue full" },
      }),
    );
    expect(err.header.status === "error" && err.header.error.code).toBe("overloaded");
    expect(() =>
      decodeResult(
        encodeFrame({
          kind: "result",
          id: "1",
          status: "error",
          error: { code: "nope", message: "" },
        }),
      ),
    ).toThrow(FrameError);
  });
});

describe("probe requests (an optional field: older frames stay valid)", () => {
  it("reads probe and the exits carried along it, and a reply's exits", () => {
    const exits = [{ stage: 1, label: 3, entropy: 0.25 }];
    const { header } = decodeRequest(encodeFrame(request({ probe: true, exits })));
    expect(header.probe).toBe(true);
    expect(header.exits).toEqual(exits);
    expect(decodeRequest(encodeFrame(request())).header.probe).toBeUndefined();
    const reply = decodeResult(
      encodeFrame({
        kind: "result",
        id: "r1",
        status: "ok",
        stage: 2,
        label: 4,
        entropy: 0.5,
        timings: {},
        exits: [...exits, { stage: 2, label: 4, entropy: 0.5 }],
      }),
    ).header;
    expect(reply.status === "ok" && reply.exits?.map((e) => e.stage)).toEqual([1, 2]);
  });

  it("refuses a malformed probe or exits with bad_frame", () => {
    expect(() => decodeRequest(encodeFrame(request({ probe: "yes" })))).toThrow(/probe/);
    expect(() => decodeRequest(encodeFrame(request({ exits: [{ stage: -1 }] })))).toThrow(/exits/);
  });
});

describe("tensor bodies", () => {
  const data = Float32Array.from({ length: 1000 }, (_, i) => Math.max(0, Math.sin(i) * 3));
  const shape = [1, 10, 10, 10];

  it("f32 is exact and f16 is within half precision", () => {
    for (const compression of ["none", "deflate", "sparse"] as const) {
      const f = encodeTensor(data, shape, { dtype: "f32", compression });
      expect(decodeTensor(f.fields, f.body, 1e6)).toEqual(data);
      const h = encodeTensor(data, shape, { dtype: "f16", compression });
      decodeTensor(h.fields, h.body, 1e6).forEach((v, i) => {
        expect(Math.abs(v - (data[i] as number))).toBeLessThanOrEqual(
          Math.abs(data[i] as number) * 2 ** -11 + 1e-7,
        );
      });
    }
    expect(encodeTensor(data, shape, { dtype: "f32", compression: "none" }).body.length).toBe(4000);
    expect(encodeTensor(data, shape, { dtype: "f16", compression: "none" }).body.length).toBe(2000);
  });

  it("u8q keeps values within half a step and zeros exact", () => {
    const q = encodeTensor(data, shape, { dtype: "u8q", compression: "deflate" });
    expect(q.fields.zero).toBe(0);
    const back = decodeTensor(q.fields, q.body, 1e6);
    back.forEach((v, i) => {
      expect(Math.abs(v - (data[i] as number))).toBeLessThanOrEqual(
        (q.fields.scale as number) / 2 + 1e-6,
      );
      if (data[i] === 0) expect(v).toBe(0);
    });
    const neg = Float32Array.of(-2, -1, 0, 1);
    const nq = encodeTensor(neg, [4], { dtype: "u8q", compression: "none" });
    expect(
      Array.from(decodeTensor(nq.fields, nq.body, 10)).map((v) => Math.round(v * 100) / 100),
    ).toEqual([-2, -1, 0, 1]);
  });

  it("refuses bodies that do not match the shape, bombs and missing quantization fields", () => {
    expect(() =>
      decodeTensor({ dtype: "f32", shape: [1, 3], compression: "none" }, new Uint8Array(8), 100),
    ).toThrow(/holds 8 bytes; f32 shape \[1, 3\] needs 12/);
    expect(() =>
      decodeTensor(
        { dtype: "f32", shape: [1000, 1000], compression: "none" },
        new Uint8Array(8),
        100,
      ),
    ).toThrow(/over the limit/);
    const bomb = new Uint8Array(deflateSync(new Uint8Array(10_000_000)));
    expect(() =>
      decodeTensor({ dtype: "f32", shape: [1, 4], compression: "deflate" }, bomb, 100),
    ).toThrow(/does not inflate/);
    expect(() =>
      decodeTensor({ dtype: "u8q", shape: [2], compression: "none" }, new Uint8Array(2), 100),
    ).toThrow(/scale and zero/);
    const nan = encodeTensor(Float32Array.of(Number.NaN), [1], {
      dtype: "f32",
      compression: "none",
    });
    expect(() => decodeTensor(nan.fields, nan.body, 10)).toThrow(/not finite/);
    // A finite scale whose products overflow float32: the element that overflows is named.
    const overflow: TensorFields = {
      dtype: "u8q",
      shape: [3],
      compression: "none",
      scale: 1e38,
      zero: 0,
    };
    expect(() => decodeTensor(overflow, Uint8Array.of(0, 1, 200), 10)).toThrow(
      "tensor element 2 is not finite",
    );
  });

  it("dequantizes u8q to exactly scale * (byte - zero) rounded to float32", () => {
    const scale = 0.0137;
    const zero = 3;
    const bytes = Uint8Array.from({ length: 256 }, (_, i) => 255 - i);
    const out = decodeTensor(
      { dtype: "u8q", shape: [256], compression: "none", scale, zero },
      bytes,
      256,
    );
    expect(Array.from(out)).toEqual(Array.from(bytes, (b) => Math.fround(scale * (b - zero))));
  });
});

describe("sparse bodies (zero bitmap, then the non-zero bytes)", () => {
  it("lay out the bitmap least significant bit first and decode to the same tensor as deflate", () => {
    const raw = Uint8Array.of(0, 7, 0, 0, 0, 0, 0, 0, 9, 0, 200);
    const body = sparseEncode(raw);
    // bit 1 of byte 0 (element 1), bits 0 and 2 of byte 1 (elements 8 and 10)
    expect(Array.from(body)).toEqual([0b10, 0b101, 7, 9, 200]);
    expect(Array.from(sparseDecode(body, raw.length))).toEqual(Array.from(raw));
    const features = Float32Array.from({ length: 784 }, (_, i) =>
      i % 5 === 0 ? Math.abs(Math.sin(i)) * 4 : 0,
    );
    for (const dtype of ["f32", "f16", "u8q"] as const) {
      const sparse = encodeTensor(features, [1, 16, 7, 7], { dtype, compression: "sparse" });
      const deflate = encodeTensor(features, [1, 16, 7, 7], { dtype, compression: "deflate" });
      expect(sparse.fields.compression).toBe("sparse");
      expect(decodeTensor(sparse.fields, sparse.body, 1e6)).toEqual(
        decodeTensor(deflate.fields, deflate.body, 1e6),
      );
    }
    const q = encodeTensor(features, [1, 784], { dtype: "u8q", compression: "sparse" });
    const raw8 = encodeTensor(features, [1, 784], { dtype: "u8q", compression: "none" }).body;
    expect(q.body.length).toBe(98 + raw8.filter((b) => b !== 0).length);
    expect(sparseEncode(new Uint8Array(0)).length).toBe(0);
    expect(decodeTensor({ ...q.fields, shape: [1, 0] }, new Uint8Array(0), 10)).toHaveLength(0);
  });

  it("refuse bodies whose bitmap and bytes disagree, with bad_frame", () => {
    const fields: TensorFields = {
      dtype: "u8q",
      shape: [1, 10],
      scale: 1,
      zero: 0,
      compression: "sparse",
    };
    const cases: [number[], RegExp][] = [
      [[0b1], /shorter than the 2-byte bitmap/],
      [[0b1, 0, 5, 6], /holds 2 bytes after its bitmap, which marks 1/],
      [[0b11, 0, 5], /marks more non-zero bytes than the 1/],
      [[0, 0b100], /marks bytes past the 10/],
    ];
    for (const [body, message] of cases) {
      expect(() => decodeTensor(fields, Uint8Array.from(body), 100)).toThrow(message);
      try {
        decodeTensor(fields, Uint8Array.from(body), 100);
      } catch (err) {
        expect((err as FrameError).code).toBe("bad_frame");
      }
    }
    expect(Array.from(decodeTensor(fields, Uint8Array.of(0b1, 0b10, 5, 6), 100))).toEqual([
      5, 0, 0, 0, 0, 0, 0, 0, 0, 6,
    ]);
  });

  it("are accepted in request headers, where unknown codes are not", () => {
    expect(decodeRequest(encodeFrame(request({ compression: "sparse" }))).header.compression).toBe(
      "sparse",
    );
    expect(() => decodeRequest(encodeFrame(request({ compression: "zstd" })))).toThrow(
      /header field compression/,
    );
  });
});

describe("half precision", () => {
  it("converts exactly representable values and rounds to nearest even", () => {
    for (const v of [0, 1, -2, 0.5, 65504, 2 ** -24, -(2 ** -14)])
      expect(fromHalf(toHalf(v))).toBe(v);
    expect(toHalf(1 + 2 ** -11)).toBe(toHalf(1));
    expect(fromHalf(toHalf(1e6))).toBe(Number.POSITIVE_INFINITY);
    expect(fromHalf(toHalf(Number.NaN))).toBeNaN();
  });
});
