/**
 * The hand-written request header checks (checkRequestHeader) against the zod schema they stand in
 * for, on random and mutated headers: whatever the fast path accepts the schema accepts, with the
 * same result (values and key order); whatever the schema accepts with only keys the fast path
 * knows, the fast path accepts too; and decodeRequest's verdicts and error messages are the
 * schema's.
 */
import { describe, expect, it } from "vitest";
import {
  checkRequestHeader,
  checkResultHeader,
  decodeRequest,
  encodeFrame,
  type FrameError,
  requestHeaderSchema,
  resultHeaderSchema,
} from "./frame.js";

/** A small deterministic generator (LCG), so a failure reproduces. */
function rng(seed: number) {
  let s = seed >>> 0;
  const next = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)] as T,
  };
}

const digest = "0123456789abcdef".repeat(4);
const base = (): Record<string, unknown> => ({
  kind: "infer",
  id: "cam-1-0a1b2c3d-42",
  model: "fog/fashion",
  digest,
  stage: 1,
  replyTo: "ddnn/fog/fashion/reply/cam-1",
  deadline: 1_900_000_000_000,
  sentAt: 1_899_999_999_000,
  dtype: "u8q",
  shape: [1, 16, 7, 7],
  scale: 0.0123,
  zero: 0,
  compression: "deflate",
});

const strings = [
  "",
  "a",
  "x".repeat(256),
  "x".repeat(257),
  "x".repeat(1024),
  "x".repeat(1025),
  "fog/fashion",
  "fog/fashion/extra",
  "/fashion",
  "fog/",
  "ddnn/a/+/b",
  "ddnn/a/#",
  "ddnn/\u0000",
  "ddnn/\u009f",
  "ddnn/\ufdd0",
  "ddnn/\ud800",
  "ddnn/\ud83d\ude00",
  digest,
  digest.toUpperCase(),
  `${digest}0`,
  "infer",
  "result",
  "f32",
  "f16",
  "u8q",
  "f64",
  "none",
  "deflate",
  "sparse",
  "gzip",
];
const numbers = [
  0,
  -0,
  1,
  -1,
  1.5,
  63,
  64,
  255,
  256,
  2 ** 53 - 1,
  2 ** 53,
  1e300,
  5e-324,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
  Number.NaN,
];
const others: unknown[] = [true, false, null, [], {}, [1], { a: 1 }];

function value(r: ReturnType<typeof rng>, depth = 0): unknown {
  const kind = r.int(depth > 1 ? 3 : 5);
  if (kind === 0) return r.pick(strings);
  if (kind === 1) return r.pick(numbers);
  if (kind === 2) return r.pick(others);
  if (kind === 3)
    return Array.from({ length: r.pick([0, 1, 2, 4, 8, 9, 65]) }, () =>
      r.next() < 0.7 ? r.int(40) : value(r, depth + 1),
    );
  const o: Record<string, unknown> = {};
  for (let i = r.int(4); i > 0; i--)
    o[r.pick(["a", "server", "stage", "label", "entropy", "x"])] = value(r, depth + 1);
  return o;
}

const keys = [
  "kind",
  "id",
  "model",
  "digest",
  "stage",
  "replyTo",
  "deadline",
  "sentAt",
  "timings",
  "probe",
  "exits",
  "dtype",
  "shape",
  "scale",
  "zero",
  "compression",
];

function mutate(r: ReturnType<typeof rng>, h: Record<string, unknown>): void {
  const what = r.int(10);
  const key = r.pick(keys);
  if (what === 0) delete h[key];
  else if (what === 1) {
    const extra = r.pick(["extra", "capture", "view", "logits", "__proto__"]);
    // An own "__proto__" key, as JSON.parse makes one (plain assignment sets the prototype).
    Object.defineProperty(h, extra, {
      value: value(r),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  } else if (what === 2) h.timings = r.next() < 0.5 ? { edge: r.pick(numbers) } : value(r);
  else if (what === 3)
    h.exits = Array.from({ length: r.pick([0, 1, 2, 64, 65]) }, () =>
      r.next() < 0.8
        ? { stage: r.pick([0, 1, 2]), label: r.pick([0, 3, -1, 1.5]), entropy: r.pick(numbers) }
        : value(r),
    );
  else if (what === 4)
    h.shape = Array.from({ length: r.pick([0, 1, 2, 4, 8, 9]) }, () =>
      r.next() < 0.8 ? r.int(30) : r.pick(numbers),
    );
  else if (what === 5) h.probe = r.pick([true, false, 0, "true"]);
  else h[key] = value(r);
}

/** Parses as decodeFrame does: through JSON, so only what a frame can carry. */
function viaJson(h: Record<string, unknown>): Record<string, unknown> {
  return JSON.parse(JSON.stringify(h)) as Record<string, unknown>;
}

const fastKnows = (h: Record<string, unknown>) =>
  Object.keys(h).every((k) => keys.includes(k)) &&
  (!Array.isArray(h.exits) ||
    h.exits.every(
      (e) =>
        typeof e !== "object" ||
        e === null ||
        Object.keys(e).every((k) => ["stage", "label", "entropy"].includes(k)),
    ));

function compare(h: Record<string, unknown>): "accepted" | "refused" | "schema" {
  const fast = checkRequestHeader(h);
  const zod = requestHeaderSchema.safeParse(h);
  if (fast !== undefined) {
    expect(zod.success, JSON.stringify(h)).toBe(true);
    expect(fast).toStrictEqual(zod.data);
    expect(Object.keys(fast)).toEqual(Object.keys(zod.data as object));
    return "accepted";
  }
  if (zod.success) {
    expect(fastKnows(h), `fast path refused a valid header ${JSON.stringify(h)}`).toBe(false);
    return "schema";
  }
  return "refused";
}

describe("hand-written request header checks", () => {
  it("accept exactly what the schema accepts, with the same result, on mutated headers", () => {
    const r = rng(14);
    const seen = { accepted: 0, refused: 0, schema: 0 };
    for (let n = 0; n < 20_000; n++) {
      const h = base();
      if (r.next() < 0.3) h.timings = { edge: 0.25, edgeQueue: 1 };
      if (r.next() < 0.2) {
        h.probe = true;
        h.exits = [{ entropy: 0.5, stage: 0, label: 3 }];
      }
      if (r.next() < 0.3) delete h.compression;
      for (let m = r.int(3); m > 0; m--) mutate(r, h);
      // Both as the object (Infinity, NaN, -0 included) and as a frame's JSON would carry it.
      seen[compare(h)]++;
      compare(viaJson(h));
    }
    // The generator reaches every verdict often.
    expect(seen.accepted).toBeGreaterThan(2000);
    expect(seen.refused).toBeGreaterThan(2000);
    expect(seen.schema).toBeGreaterThan(100);
  });

  it("leave a header with a field they do not know to the schema (fields added later)", () => {
    const h = { ...base(), capture: "cap-1", view: 2 };
    expect(checkRequestHeader(h)).toBeUndefined();
    expect(decodeRequest(encodeFrame(h)).header).toMatchObject({ capture: "cap-1", view: 2 });
    expect(() => decodeRequest(encodeFrame({ ...h, view: 64 }))).toThrow(/header field view/);
  });

  it("default compression to none and keep the schema's key order", () => {
    const { compression: _c, ...rest } = base();
    const out = checkRequestHeader({ ...rest, shape: [1, 2], stage: 0 });
    expect(out?.compression).toBe("none");
    expect(Object.keys(out!)).toEqual(
      Object.keys(requestHeaderSchema.parse({ ...rest, shape: [1, 2], stage: 0 })),
    );
  });

  it("decodeRequest's errors are the schema's: same first issue, id and replyTo", () => {
    const r = rng(7);
    for (let n = 0; n < 3000; n++) {
      const h = base();
      for (let m = 1 + r.int(2); m > 0; m--) mutate(r, h);
      const frame = encodeFrame(h);
      const zod = requestHeaderSchema.safeParse(viaJson(h));
      let error: FrameError | undefined;
      try {
        decodeRequest(frame);
      } catch (err) {
        error = err as FrameError;
      }
      expect(error === undefined, JSON.stringify(h)).toBe(zod.success);
      if (error && !zod.success) {
        const issue = zod.error.issues[0]!;
        expect(error.message).toBe(
          `header field ${issue.path.map(String).join(".") || "header"}: ${issue.message}`,
        );
      }
    }
  });
});

describe("hand-written ok reply header checks", () => {
  const reply = (): Record<string, unknown> => ({
    kind: "result",
    id: "cam-1-0a1b2c3d-42",
    status: "ok",
    stage: 1,
    label: 3,
    entropy: 0.125,
    tier: "server",
    timings: { server: 0.25, serverQueue: 0 },
  });
  const replyKeys = [
    "kind",
    "id",
    "status",
    "stage",
    "label",
    "entropy",
    "timings",
    "exits",
    "tier",
    "error",
  ];

  it("accept only what the schema accepts, with the same result, on mutated replies", () => {
    const r = rng(41);
    let accepted = 0;
    for (let n = 0; n < 20_000; n++) {
      const h = reply();
      if (r.next() < 0.3) delete h.timings;
      if (r.next() < 0.2) h.exits = [{ label: 1, stage: 0, entropy: 0.75 }];
      for (let m = r.int(3); m > 0; m--) {
        const key = r.pick(replyKeys);
        const what = r.int(4);
        if (what === 0) delete h[key];
        else if (what === 1) h.timings = r.next() < 0.5 ? { server: r.pick(numbers) } : value(r);
        else h[key] = r.next() < 0.3 ? r.pick(["ok", "error", "result", ""]) : value(r);
      }
      for (const x of [h, viaJson(h)]) {
        const fast = checkResultHeader(x);
        const zod = resultHeaderSchema.safeParse(x);
        if (fast === undefined) {
          // Valid ok replies with plain exits are all taken by the fast path.
          if (zod.success && zod.data.status === "ok" && fastKnows({ exits: x.exits }))
            expect.unreachable(`fast path refused a valid reply ${JSON.stringify(x)}`);
          continue;
        }
        accepted++;
        expect(zod.success, JSON.stringify(x)).toBe(true);
        expect(fast).toStrictEqual(zod.data);
        expect(Object.keys(fast)).toEqual(Object.keys(zod.data as object));
      }
    }
    expect(accepted).toBeGreaterThan(5000);
  });
});
