/**
 * Contract 2, the DDN1 wire frame, the same for requests and replies:
 *   bytes 0..3 "DDN1" | 4..7 uint32 LE header length H | 8..8+H UTF-8 JSON header | tensor body.
 */
import { z } from "zod";

export const FRAME_MAGIC = "DDN1";
const MAGIC = new TextEncoder().encode(FRAME_MAGIC);
const PREFIX = 8;
/** A JSON header this large is a mistake or an attack; refuse before parsing it. */
export const MAX_HEADER_BYTES = 64 * 1024;

export const errorCodes = [
  "bad_frame",
  "unknown_model",
  "digest_mismatch",
  "deadline_exceeded",
  "overloaded",
  "internal",
] as const;
export type ErrorCode = (typeof errorCodes)[number];

export const dtypes = ["f32", "f16", "u8q"] as const;
export type WireDtype = (typeof dtypes)[number];
/**
 * Body codes a frame may carry and the tiers' --compression can choose: "none", "deflate" (zlib,
 * the default) and "sparse" (a zero bitmap and the non-zero bytes, docs/protocol.md).
 */
export const compressions = ["none", "deflate", "sparse"] as const;
export type Compression = (typeof compressions)[number];
/** The same list under the name the decoder uses. */
export const wireCompressions = compressions;
export type WireCompression = (typeof wireCompressions)[number];

const dim = z.number().int().nonnegative();

/**
 * True for a topic name a reply can be published to: not empty, no wildcard (+ #), no control
 * character (U+0000-U+001F, U+007F-U+009F), no Unicode non-character (U+FDD0-U+FDEF, U+xFFFE,
 * U+xFFFF) and no lone surrogate. MQTT forbids or discourages these in topic names; Mosquitto
 * disconnects a client that publishes to one, so a reply to such a replyTo would knock the worker
 * off the broker (and again on every reconnect, when the client resends it).
 */
export function isTopicName(topic: string): boolean {
  if (topic.length === 0) return false;
  for (const ch of topic) {
    const c = ch.codePointAt(0) as number;
    if (c === 0x2b || c === 0x23 || c <= 0x1f || (c >= 0x7f && c <= 0x9f)) return false;
    if ((c >= 0xfdd0 && c <= 0xfdef) || (c & 0xfffe) === 0xfffe) return false;
    if (c >= 0xd800 && c <= 0xdfff) return false;
  }
  return true;
}

/** Fields that describe the tensor body; shared by requests and (optionally) replies. */
export const tensorHeaderSchema = z.object({
  dtype: z.enum(dtypes),
  shape: z.array(dim).min(1).max(8),
  scale: z.number().positive().finite().optional(),
  zero: z.number().int().min(0).max(255).optional(),
  compression: z.enum(wireCompressions).default("none"),
});

/** One exit's answer for a sample: its stage index, argmax label and normalized entropy. */
export interface ExitAnswer {
  readonly stage: number;
  readonly label: number;
  readonly entropy: number;
}

export const exitAnswerSchema = z.object({
  stage: z.number().int().nonnegative(),
  label: z.number().int().nonnegative(),
  entropy: z.number(),
});

export const requestHeaderSchema = z.looseObject({
  kind: z.literal("infer"),
  id: z.string().min(1).max(256),
  model: z.string().regex(/^[^/]+\/[^/]+$/, "must be <namespace>/<name>"),
  digest: z.string().regex(/^[0-9a-f]{64}$/, "must be the bundle's sha256 (64 lowercase hex)"),
  stage: z.number().int().nonnegative(),
  replyTo: z
    .string()
    .min(1)
    .max(1024)
    .refine(
      isTopicName,
      "must be a topic name without wildcards, control characters or non-characters",
    ),
  deadline: z.number().finite().optional(),
  sentAt: z.number().finite().optional(),
  /** Milliseconds spent by the tiers before this one; each tier adds its own to the reply. */
  timings: z.record(z.string(), z.number().finite()).optional(),
  /**
   * A measurement, not traffic (`ddnn profile`): the device already answered this sample. A tier
   * that honours it runs every stage to the last one without exiting early and reports each exit's
   * answer in the reply's `exits`; a tier that does not treats it as an ordinary request.
   */
  probe: z.boolean().optional(),
  /** Exits answered by the tiers before this one, carried along a probe. */
  exits: z.array(exitAnswerSchema).max(64).optional(),
  /**
   * Multi-view (horizontal) requests, docs/protocol.md "view requests": the capture (one scene seen
   * by several devices) this view belongs to, the view index, and the device's exit logits; the
   * body is that view's stage 0 features. Absent on every other request.
   */
  capture: z.string().min(1).max(256).optional(),
  view: z.number().int().min(0).max(63).optional(),
  logits: z.array(z.number()).min(1).max(4096).optional(),
  ...tensorHeaderSchema.shape,
});
export type RequestHeader = z.infer<typeof requestHeaderSchema>;

export interface ResultOk {
  kind: "result";
  id: string;
  status: "ok";
  stage: number;
  label: number;
  entropy: number;
  timings: Record<string, number>;
  /** In a reply to a probe: every exit's answer the upstream tiers computed, in stage order. */
  exits?: ExitAnswer[];
  [extra: string]: unknown;
}

export interface ResultError {
  kind: "result";
  id: string;
  status: "error";
  error: { code: ErrorCode; message: string };
  [extra: string]: unknown;
}

export type ResultHeader = ResultOk | ResultError;

export const resultHeaderSchema = z.discriminatedUnion("status", [
  z.looseObject({
    kind: z.literal("result"),
    id: z.string(),
    status: z.literal("ok"),
    stage: z.number().int().nonnegative(),
    label: z.number().int().nonnegative(),
    entropy: z.number(),
    timings: z.record(z.string(), z.number()).default({}),
    exits: z.array(exitAnswerSchema).max(64).optional(),
  }),
  z.looseObject({
    kind: z.literal("result"),
    id: z.string(),
    status: z.literal("error"),
    error: z.object({ code: z.enum(errorCodes), message: z.string() }),
  }),
]);

/** A frame that cannot be used. `id`/`replyTo` are set when they could still be read. */
export class FrameError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly id?: string,
    readonly replyTo?: string,
  ) {
    super(message);
    this.name = "FrameError";
  }
}

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

export function encodeFrame(header: object, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  const json = utf8.encode(JSON.stringify(header));
  const out = new Uint8Array(PREFIX + json.length + body.length);
  out.set(MAGIC, 0);
  new DataView(out.buffer).setUint32(4, json.length, true);
  out.set(json, PREFIX);
  out.set(body, PREFIX + json.length);
  return out;
}

/** Splits a frame into its parsed JSON header and its body. Throws FrameError("bad_frame"). */
export function decodeFrame(frame: Uint8Array): {
  header: Record<string, unknown>;
  body: Uint8Array;
} {
  if (frame.length < PREFIX)
    throw new FrameError(
      "bad_frame",
      `frame is ${frame.length} bytes, shorter than the 8-byte prefix`,
    );
  for (let i = 0; i < 4; i++) {
    if (frame[i] !== MAGIC[i])
      throw new FrameError("bad_frame", `frame does not start with "${FRAME_MAGIC}"`);
  }
  const length = new DataView(frame.buffer, frame.byteOffset, frame.byteLength).getUint32(4, true);
  if (length > MAX_HEADER_BYTES)
    throw new FrameError("bad_frame", `header length ${length} exceeds ${MAX_HEADER_BYTES} bytes`);
  if (PREFIX + length > frame.length) {
    throw new FrameError(
      "bad_frame",
      `header length ${length} runs past the end of the ${frame.length}-byte frame`,
    );
  }
  let header: unknown;
  try {
    header = JSON.parse(utf8Strict.decode(frame.subarray(PREFIX, PREFIX + length)));
  } catch (err) {
    throw new FrameError("bad_frame", `header is not UTF-8 JSON (${(err as Error).message})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new FrameError("bad_frame", "header is not a JSON object");
  }
  return { header: header as Record<string, unknown>, body: frame.subarray(PREFIX + length) };
}

/*
 * The request header's rules written out by hand: the schema above costs ~40 us per request in
 * zod, these checks ~1 us. They only ever accept: a header they do not accept (a rule broken, or
 * a key they do not know, such as a field added to the schema later) goes to the schema, which
 * decides and words the error. So the schema stays the contract; header-fast-path.test.ts checks
 * on random and mutated headers that whatever this accepts the schema accepts, with the same result.
 */
const isInt = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v);
const isCount = (v: unknown): boolean => isInt(v) && v >= 0;
const isFiniteNumber = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);
const isPlainObject = (v: unknown): v is Record<string, unknown> => {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
};
const MODEL_REF = /^[^/]+\/[^/]+$/;
const DIGEST = /^[0-9a-f]{64}$/;
const exitKeys = ["stage", "label", "entropy"] as const;
const isExitAnswer = (v: unknown): boolean => {
  if (!isPlainObject(v)) return false;
  // z.object strips keys it does not know: leave such entries to the schema.
  const keys = Object.keys(v);
  return (
    keys.length === 3 &&
    keys.every((k) => (exitKeys as readonly string[]).includes(k)) &&
    isCount(v.stage) &&
    isCount(v.label) &&
    isFiniteNumber(v.entropy)
  );
};
const requestRules = new Map<string, (v: unknown) => boolean>([
  ["kind", (v) => v === "infer"],
  ["id", (v) => typeof v === "string" && v.length >= 1 && v.length <= 256],
  ["model", (v) => typeof v === "string" && MODEL_REF.test(v)],
  ["digest", (v) => typeof v === "string" && DIGEST.test(v)],
  ["stage", isCount],
  ["replyTo", (v) => typeof v === "string" && v.length >= 1 && v.length <= 1024 && isTopicName(v)],
  ["deadline", isFiniteNumber],
  ["sentAt", isFiniteNumber],
  [
    "timings",
    (v) =>
      isPlainObject(v) && !Object.hasOwn(v, "__proto__") && Object.values(v).every(isFiniteNumber),
  ],
  ["probe", (v) => typeof v === "boolean"],
  ["exits", (v) => Array.isArray(v) && v.length <= 64 && v.every(isExitAnswer)],
  ["dtype", (v) => (dtypes as readonly unknown[]).includes(v)],
  ["shape", (v) => Array.isArray(v) && v.length >= 1 && v.length <= 8 && v.every(isCount)],
  ["scale", (v) => isFiniteNumber(v) && v > 0],
  ["zero", (v) => isInt(v) && v >= 0 && v <= 255],
  ["compression", (v) => (wireCompressions as readonly unknown[]).includes(v)],
]);
const requiredRequestKeys = ["kind", "id", "model", "digest", "stage", "replyTo", "dtype", "shape"];
const schemaKeys = Object.keys(requestHeaderSchema.shape);
/**
 * Only while the rules above cover the schema: every key they check is in it, and every schema
 * key they do not know is optional without a default (absent from a header, it adds nothing to
 * the schema's result). A schema that gains a required or defaulted field turns the fast path off.
 */
const fastPathCoversSchema =
  [...requestRules.keys()].every((k) => schemaKeys.includes(k)) &&
  requiredRequestKeys.every(
    (k) =>
      !requestHeaderSchema.shape[k as keyof typeof requestHeaderSchema.shape].safeParse(undefined)
        .success,
  ) &&
  schemaKeys.every((k) => {
    if (requestRules.has(k)) return true;
    const r =
      requestHeaderSchema.shape[k as keyof typeof requestHeaderSchema.shape].safeParse(undefined);
    return r.success && r.data === undefined;
  });

/**
 * A request header that follows every rule of requestHeaderSchema and holds no key the hand-written
 * rules do not know, as the schema would return it (its keys in the schema's order, compression
 * defaulted to "none"); undefined for any other header, which the schema must then judge.
 */
export function checkRequestHeader(header: Record<string, unknown>): RequestHeader | undefined {
  // JSON.parse makes plain objects; anything else (inherited keys) is the schema's to judge.
  if (!fastPathCoversSchema || Object.getPrototypeOf(header) !== Object.prototype) return undefined;
  for (const key of Object.keys(header)) {
    const rule = requestRules.get(key);
    if (rule === undefined || !rule(header[key])) return undefined;
  }
  for (const key of requiredRequestKeys) if (!Object.hasOwn(header, key)) return undefined;
  return inSchemaOrder(header, schemaKeys, "compression", () => "none") as RequestHeader;
}

/** Decodes and validates a request frame; errors keep `id` and `replyTo` when they were readable. */
export function decodeRequest(frame: Uint8Array): { header: RequestHeader; body: Uint8Array } {
  const { header, body } = decodeFrame(frame);
  const fast = checkRequestHeader(header);
  if (fast) return { header: fast, body };
  const parsed = requestHeaderSchema.safeParse(header);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where = issue.path.map(String).join(".") || "header";
    const id = typeof header.id === "string" && header.id.length > 0 ? header.id : undefined;
    const replyTo =
      typeof header.replyTo === "string" && isTopicName(header.replyTo)
        ? header.replyTo
        : undefined;
    throw new FrameError("bad_frame", `header field ${where}: ${issue.message}`, id, replyTo);
  }
  return { header: parsed.data, body };
}

const resultOkRules = new Map<string, (v: unknown) => boolean>([
  ["kind", (v) => v === "result"],
  ["id", (v) => typeof v === "string"],
  ["status", (v) => v === "ok"],
  ["stage", isCount],
  ["label", isCount],
  ["entropy", isFiniteNumber],
  ["timings", (v) => isPlainObject(v) && Object.values(v).every(isFiniteNumber)],
  ["exits", (v) => Array.isArray(v) && v.length <= 64 && v.every(isExitAnswer)],
]);
const resultOkKeys = Object.keys(resultHeaderSchema.options[0].shape);
/** The ok branch has exactly the fields the rules know (it keeps every other key, so must this). */
const resultFastPathCoversSchema =
  resultOkKeys.length === resultOkRules.size && resultOkKeys.every((k) => resultOkRules.has(k));

/**
 * What a schema returns for a header its rules accepted: the schema's fields in its order, copies
 * of the nested exits and timings (the schema makes new objects), and the one defaulted field.
 */
function inSchemaOrder(
  header: Record<string, unknown>,
  keys: readonly string[],
  defaulted: string,
  fallback: () => unknown,
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of keys) {
    const v = header[key];
    if (v !== undefined)
      out[key] =
        key === "exits"
          ? (v as ExitAnswer[]).map((e) => ({ stage: e.stage, label: e.label, entropy: e.entropy }))
          : key === "timings"
            ? { ...(v as Record<string, number>) }
            : v;
    else if (key === defaulted) out[key] = fallback();
  }
  return out;
}

/**
 * An ok reply header that follows every rule of resultHeaderSchema, as the schema returns it
 * (its fields in the schema's order, timings defaulted to {}, other keys after them); undefined
 * for any other header (error replies included), which the schema must then judge.
 */
export function checkResultHeader(header: Record<string, unknown>): ResultOk | undefined {
  if (!resultFastPathCoversSchema || Object.getPrototypeOf(header) !== Object.prototype)
    return undefined;
  if (header.status !== "ok" || Object.hasOwn(header, "__proto__")) return undefined;
  for (const [key, rule] of resultOkRules) {
    const v = header[key];
    if (v === undefined ? key !== "timings" && key !== "exits" : !rule(v)) return undefined;
  }
  if (isPlainObject(header.timings) && Object.hasOwn(header.timings, "__proto__")) return undefined;
  const out = inSchemaOrder(header, resultOkKeys, "timings", () => ({}));
  for (const key of Object.keys(header)) if (!resultOkRules.has(key)) out[key] = header[key];
  return out as ResultOk;
}

export function decodeResult(frame: Uint8Array): { header: ResultHeader; body: Uint8Array } {
  const { header, body } = decodeFrame(frame);
  const fast = checkResultHeader(header);
  if (fast) return { header: fast, body };
  const parsed = resultHeaderSchema.safeParse(header);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new FrameError(
      "bad_frame",
      `result header field ${issue.path.map(String).join(".") || "header"}: ${issue.message}`,
    );
  }
  return { header: parsed.data as ResultHeader, body };
}
