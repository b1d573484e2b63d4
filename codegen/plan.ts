/**
 * Static memory for the generated model: every activation gets an offset in one float arena,
 * sized at generation time. Buffers whose lifetimes do not overlap share memory (first fit), and
 * an elementwise layer writes over its input when nothing reads that input later.
 */
import type { Layer, LoweredGraph } from "./graph.js";

export interface MemoryPlan {
  /** Offset (in floats) of each activation's storage in the arena. */
  readonly offsets: ReadonlyMap<string, number>;
  /** Arena size in floats. */
  readonly arenaFloats: number;
}

/** Values a layer reads. */
export function layerInputs(layer: Layer): readonly string[] {
  switch (layer.op) {
    case "binary":
      return [layer.a, layer.b];
    case "concat":
      return layer.inputs;
    default:
      return [layer.x];
  }
}

const ALIGN = 4;

export function planMemory(graph: LoweredGraph): MemoryPlan {
  const storageOf = (name: string) => {
    const v = graph.values.get(name);
    return v?.kind === "act" ? v.storage : undefined;
  };
  // Storage -> root storage (in-place layers merge their output into their input's storage).
  const root = new Map<string, string>();
  const find = (s: string): string => {
    let r = s;
    while (root.has(r)) r = root.get(r)!;
    return r;
  };
  const sizeOf = new Map<string, number>();
  const first = new Map<string, number>();
  const last = new Map<string, number>();
  const end = graph.layers.length;
  const touch = (s: string, t: number) => {
    if (!first.has(s)) first.set(s, t);
    last.set(s, Math.max(last.get(s) ?? t, t));
  };
  for (const v of graph.values.values()) {
    if (v.kind !== "act") continue;
    const n = v.shape.reduce((a, b) => a * b, 1);
    sizeOf.set(v.storage, Math.max(sizeOf.get(v.storage) ?? 0, n));
  }
  graph.layers.forEach((layer, t) => {
    for (const i of layerInputs(layer)) {
      const s = storageOf(i);
      if (s) touch(s, t);
    }
    const s = storageOf(layer.y);
    if (s) touch(s, t);
  });
  for (const o of graph.outputs) {
    const s = storageOf(o);
    if (s) touch(s, end);
  }
  // In place: an elementwise layer whose input storage dies at this layer.
  graph.layers.forEach((layer, t) => {
    const elementwise =
      layer.op === "relu" ||
      layer.op === "sigmoid" ||
      layer.op === "clip" ||
      layer.op === "affine" ||
      (layer.op === "binary" && layer.aStrides === undefined);
    if (!elementwise) return;
    const out = storageOf(layer.y);
    if (!out) return;
    for (const i of layerInputs(layer)) {
      const s = storageOf(i);
      if (!s) continue;
      const r = find(s);
      if (r === find(out) || last.get(r) !== t) continue;
      if (sizeOf.get(r) !== sizeOf.get(out)) continue;
      root.set(out, r);
      last.set(r, Math.max(last.get(r)!, last.get(out)!));
      break;
    }
  });
  const roots = [...sizeOf.keys()].filter((s) => !root.has(s) && first.has(s));
  roots.sort((a, b) => first.get(a)! - first.get(b)! || a.localeCompare(b));
  const placed: { start: number; size: number; until: number }[] = [];
  const rootOffset = new Map<string, number>();
  let arena = 0;
  for (const r of roots) {
    const from = first.get(r)!;
    const n = Math.ceil(sizeOf.get(r)! / ALIGN) * ALIGN;
    // Blocks still live when r is written (a layer's inputs and output must not share memory).
    const live = placed.filter((p) => p.until >= from).sort((a, b) => a.start - b.start);
    let offset = 0;
    for (const p of live) {
      if (offset + n <= p.start) break;
      offset = Math.max(offset, p.start + p.size);
    }
    placed.push({ start: offset, size: n, until: last.get(r)! });
    rootOffset.set(r, offset);
    arena = Math.max(arena, offset + n);
  }
  const offsets = new Map<string, number>();
  for (const s of sizeOf.keys()) {
    const o = rootOffset.get(find(s));
    if (o !== undefined) offsets.set(s, o);
  }
  return { offsets, arenaFloats: arena };
}
