import { existsSync, readFileSync } from "node:fs";
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
