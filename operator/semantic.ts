import { createHash } from "node:crypto";
import { APPLIED_HASH_ANNOTATION } from "./builders.js";
import type { KubeObject } from "./kube.js";

/**
 * "Is this object already applied?" without asking the API server. The live object (from the
 * watch cache) must carry the hash of exactly what we would apply (so a field we stopped setting
 * still triggers an apply that removes it) and still hold every field we set (so a hand edit of
 * one of our fields is put back). The API server adds defaults and drops empty values, so a
 * missing field equals an empty one and quantities compare by value.
 */
export function appliedHash(desired: object): string {
  return createHash("sha256").update(canonicalJson(desired)).digest("hex");
}

/** The desired object with the hash annotation that isApplied looks for. */
export function withAppliedHash<T extends KubeObject>(desired: T): T {
  const hash = appliedHash(desired);
  const metadata = desired.metadata ?? {};
  return {
    ...desired,
    metadata: {
      ...metadata,
      annotations: { ...(metadata.annotations ?? {}), [APPLIED_HASH_ANNOTATION]: hash },
    },
  };
}

export function isApplied(live: KubeObject | undefined, desired: KubeObject): boolean {
  if (!live) return false;
  const want = desired.metadata?.annotations?.[APPLIED_HASH_ANNOTATION];
  if (want === undefined || live.metadata?.annotations?.[APPLIED_HASH_ANNOTATION] !== want)
    return false;
  return contains(live, desired, []);
}

/** True when every field of `want` is in `have` with an equal value. */
export function contains(have: unknown, want: unknown, path: readonly string[]): boolean {
  if (isEmpty(want)) return isEmpty(have);
  if (Array.isArray(want)) {
    if (!Array.isArray(have) || have.length !== want.length) return false;
    return want.every((w, i) => contains(have[i], w, path));
  }
  if (typeof want === "object" && want !== null) {
    if (typeof have !== "object" || have === null || Array.isArray(have)) return false;
    const h = have as Record<string, unknown>;
    return Object.entries(want).every(([k, w]) => contains(h[k], w, [...path, k]));
  }
  if (have === want) return true;
  if (inResources(path)) {
    const a = parseQuantity(String(have));
    const b = parseQuantity(String(want));
    return a !== undefined && a === b;
  }
  return false;
}

/** Values the API server drops (omitempty): "", 0, false, [], {}, null. */
function isEmpty(v: unknown): boolean {
  if (v === undefined || v === null || v === "" || v === 0 || v === false) return true;
  if (Array.isArray(v)) return v.length === 0;
  if (typeof v === "object") return Object.keys(v as object).length === 0;
  return false;
}

function inResources(path: readonly string[]): boolean {
  const n = path.length;
  return (
    n >= 3 &&
    path[n - 3] === "resources" &&
    (path[n - 2] === "limits" || path[n - 2] === "requests")
  );
}

const SUFFIX: Record<string, number> = {
  "": 1,
  n: 1e-9,
  u: 1e-6,
  m: 1e-3,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/** A Kubernetes quantity's value ("500m" -> 0.5, "1Gi" -> 1073741824), or undefined. */
export function parseQuantity(text: string): number | undefined {
  const m = /^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]*)$/.exec(text.trim());
  if (!m) return undefined;
  const scale = SUFFIX[m[2]!];
  if (scale === undefined) return undefined;
  // Round to the API server's smallest unit (nano) so 0.1+0.2-style errors do not differ.
  return Math.round(Number(m[1]) * scale * 1e9) / 1e9;
}

/** JSON with sorted keys, so equal objects hash equally. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (v && typeof v === "object") {
    const entries = Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonicalJson(x)}`).join(",")}}`;
  }
  return JSON.stringify(v);
}
