/**
 * eBNN-style bit-packing: a Conv or Gemm weight whose values, per output channel, are one
 * magnitude with signs only (sign(w) * alpha, as the shallow model's binarized layers export them)
 * is stored as one bit per weight plus one float per channel, and the layer runs from the bits.
 */
/** Fewer weights per channel than this are left as floats: the bits would save next to nothing. */
export const MIN_WEIGHTS_PER_CHANNEL = 8;

/**
 * The magnitude of each output channel when every weight of the channel is +alpha or -alpha
 * (alpha > 0), else undefined. `channel(i)` names the output channel of weight i.
 */
export function binaryMagnitudes(
  weights: Float32Array,
  channels: number,
  channel: (i: number) => number,
): Float32Array | undefined {
  if (weights.length / channels < MIN_WEIGHTS_PER_CHANNEL) return undefined;
  const alpha = new Float32Array(channels).fill(Number.NaN);
  for (let i = 0; i < weights.length; i++) {
    const c = channel(i);
    const magnitude = Math.abs(weights[i]!);
    const a = alpha[c]!;
    if (Number.isNaN(a)) {
      if (!(magnitude > 0) || !Number.isFinite(magnitude)) return undefined;
      alpha[c] = magnitude;
    } else if (magnitude !== a) return undefined;
  }
  return alpha;
}

/** Sets bit `at(i)` (byte at >> 3, bit at & 7) of a `bytes`-long array for every positive weight i. */
export function signBits(
  weights: Float32Array,
  bytes: number,
  at: (i: number) => number,
): Uint8Array {
  const bits = new Uint8Array(bytes);
  for (let i = 0; i < weights.length; i++) {
    if (weights[i]! > 0) {
      const b = at(i);
      bits[b >> 3] = bits[b >> 3]! | (1 << (b & 7));
    }
  }
  return bits;
}
