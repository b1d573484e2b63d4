import type { InputSpec } from "./bundle/manifest.js";

/**
 * Turns raw u8 pixels (CHW, `count` samples) into the stage-0 input tensor:
 * x = (u8 * scale - mean[c]) / std[c]. Each step is rounded to float32, the order numpy and
 * PyTorch use on float32 arrays, so the tensor is bit-identical to the trainer's.
 */
export function preprocess(input: InputSpec, pixels: Uint8Array, count: number): Float32Array {
  const perSample = input.shape.reduce((a, b) => a * b, 1);
  if (pixels.length !== perSample * count) {
    throw new RangeError(
      `input holds ${pixels.length} values; ${count} sample(s) of shape [${input.shape.join(", ")}] need ${perSample * count}`,
    );
  }
  const channels = input.shape[0] ?? 1;
  const plane = perSample / channels;
  const scale = Math.fround(input.scale);
  const means = Float32Array.from(
    { length: channels },
    (_, c) => input.mean[input.mean.length === 1 ? 0 : c] ?? 0,
  );
  const stds = Float32Array.from(
    { length: channels },
    (_, c) => input.std[input.std.length === 1 ? 0 : c] ?? 1,
  );
  const out = new Float32Array(pixels.length);
  let i = 0;
  for (let n = 0; n < count; n++) {
    for (let c = 0; c < channels; c++) {
      const mean = means[c] as number;
      const std = stds[c] as number;
      for (let k = 0; k < plane; k++, i++) {
        out[i] = Math.fround(Math.fround((pixels[i] as number) * scale) - mean) / std;
      }
    }
  }
  return out;
}
