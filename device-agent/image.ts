/**
 * Turns an uploaded image (PNG, JPEG, or raw u8 pixels) into the bundle's input layout: u8, CHW,
 * `input.shape` = [C, H, W]. One channel takes the luminance, three take RGB; other sizes are
 * resized bilinearly.
 */
import jpeg from "jpeg-js";
import { PNG } from "pngjs";

export class ImageError extends Error {
  override name = "ImageError";
}

export function isPng(b: Uint8Array): boolean {
  return b.length > 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47;
}

export function isJpeg(b: Uint8Array): boolean {
  return b.length > 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff;
}

/** Decodes an image or accepts raw pixels (exactly C*H*W bytes) into CHW u8. */
export function toInputPixels(bytes: Uint8Array, shape: readonly number[]): Uint8Array {
  const perSample = shape.reduce((a, b) => a * b, 1);
  if (!isPng(bytes) && !isJpeg(bytes)) {
    if (bytes.length !== perSample) {
      throw new ImageError(
        `body is neither PNG nor JPEG, and as raw pixels it has ${bytes.length} bytes; the model takes ${perSample} (shape [${shape.join(", ")}])`,
      );
    }
    return bytes;
  }
  if (shape.length !== 3)
    throw new ImageError(
      `images need a [C, H, W] input shape; this model takes [${shape.join(", ")}]`,
    );
  const [channels, height, width] = shape as [number, number, number];
  if (channels !== 1 && channels !== 3)
    throw new ImageError(`images give 1 or 3 channels; the model takes ${channels}`);
  if (isPng(bytes)) checkPngSize(bytes);
  let rgba: { width: number; height: number; data: Uint8Array };
  try {
    rgba = isPng(bytes)
      ? PNG.sync.read(Buffer.from(bytes))
      : jpeg.decode(bytes, {
          useTArray: true,
          formatAsRGBA: true,
          maxMemoryUsageInMB: 64,
          maxResolutionInMP: 16,
        });
  } catch (err) {
    throw new ImageError(
      `cannot decode the ${isPng(bytes) ? "PNG" : "JPEG"} image: ${(err as Error).message}`,
    );
  }
  const out = new Uint8Array(perSample);
  const sx = rgba.width / width;
  const sy = rgba.height / height;
  const px = (x: number, y: number, c: number) => rgba.data[(y * rgba.width + x) * 4 + c] as number;
  for (let y = 0; y < height; y++) {
    const fy = Math.min(rgba.height - 1, Math.max(0, (y + 0.5) * sy - 0.5));
    const y0 = Math.floor(fy);
    const y1 = Math.min(rgba.height - 1, y0 + 1);
    const wy = fy - y0;
    for (let x = 0; x < width; x++) {
      const fx = Math.min(rgba.width - 1, Math.max(0, (x + 0.5) * sx - 0.5));
      const x0 = Math.floor(fx);
      const x1 = Math.min(rgba.width - 1, x0 + 1);
      const wx = fx - x0;
      const sample = (c: number) =>
        (px(x0, y0, c) * (1 - wx) + px(x1, y0, c) * wx) * (1 - wy) +
        (px(x0, y1, c) * (1 - wx) + px(x1, y1, c) * wx) * wy;
      if (channels === 1) {
        out[y * width + x] = Math.round(0.299 * sample(0) + 0.587 * sample(1) + 0.114 * sample(2));
      } else {
        for (let c = 0; c < 3; c++) out[c * height * width + y * width + x] = Math.round(sample(c));
      }
    }
  }
  return out;
}

/** Largest image decoded, in pixels: a tiny PNG can announce gigabytes of pixels. */
export const MAX_IMAGE_PIXELS = 16_000_000;

/** Reads the PNG header (IHDR) and refuses images too large to decode safely. */
function checkPngSize(bytes: Uint8Array): void {
  if (bytes.length < 33) throw new ImageError("PNG image is truncated (no IHDR chunk)");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const width = view.getUint32(16, false);
  const height = view.getUint32(20, false);
  if (width === 0 || height === 0 || width * height > MAX_IMAGE_PIXELS) {
    throw new ImageError(
      `PNG image of ${width}x${height} pixels is refused (at most ${MAX_IMAGE_PIXELS} pixels)`,
    );
  }
}

/** Encodes u8 CHW pixels (1 or 3 channels) as PNG: used by tests and examples. */
export function pixelsToPng(pixels: Uint8Array, shape: readonly number[]): Uint8Array {
  const [channels, height, width] = shape as [number, number, number];
  const png = new PNG({ width, height });
  for (let i = 0; i < width * height; i++) {
    for (let c = 0; c < 3; c++)
      png.data[i * 4 + c] = pixels[(channels === 1 ? 0 : c) * width * height + i] as number;
    png.data[i * 4 + 3] = 255;
  }
  return new Uint8Array(PNG.sync.write(png));
}
