import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The ddnn-fog package root, found from this file whether it runs from dist/ or from source. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, "package.json");
    if (existsSync(manifest) && JSON.parse(readFileSync(manifest, "utf8")).name === "ddnn-fog")
      return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error("cannot find the ddnn-fog package root");
    dir = parent;
  }
}

/** The model and evaluation sample shipped in models/, used when no flag names others. */
export function shipped() {
  const root = packageRoot();
  return {
    bundle: join(root, "models", "fashion-deep"),
    images: join(root, "models", "eval", "fashion-mnist-t10k-2000-images-idx3-ubyte.gz"),
    labels: join(root, "models", "eval", "fashion-mnist-t10k-2000-labels-idx1-ubyte.gz"),
  };
}

/** The shipped multi-view bundle (`ddnn up --views`, the views tests). */
export function shippedViews(): string {
  return join(packageRoot(), "models", "fashion-views3");
}

/**
 * The evaluation sample a multi-view bundle directory ships in its `eval/` folder: one idx file of
 * images per view (`...-view<v>-images-idx3-ubyte.gz`) and the labels; undefined when absent.
 */
export function viewsSample(
  bundleDir: string,
  views: number,
): { images: string[]; labels: string } | undefined {
  const dir = join(bundleDir, "eval");
  if (!existsSync(dir)) return undefined;
  const files = readdirSync(dir).sort();
  const images = Array.from({ length: views }, (_, v) =>
    files.find((f) => f.endsWith(`-view${v}-images-idx3-ubyte.gz`)),
  );
  const labels = files.find((f) => f.endsWith("-labels-idx1-ubyte.gz"));
  if (!labels || images.some((f) => f === undefined)) return undefined;
  return { images: images.map((f) => join(dir, f!)), labels: join(dir, labels) };
}

/** `--images` of a multi-view run: `{view}` in the path stands for the view index. */
export function viewImagePaths(pattern: string, views: number): string[] {
  if (!pattern.includes("{view}"))
    throw new Error(
      `a ${views}-view bundle needs one images file per view: write {view} in the path (${pattern})`,
    );
  return Array.from({ length: views }, (_, v) => pattern.replaceAll("{view}", String(v)));
}
