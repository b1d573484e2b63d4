/**
 * vitest global setup: the tests start `ddnn` processes and inference workers from dist/, so a
 * dist/ older than the sources would test yesterday's code. Rebuild it first when any source file
 * is newer than its compiled output (or has none).
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { packageRoot } from "../../cli/paths.js";

/** The folders tsconfig.build.json compiles into dist/. */
export const BUILT_FOLDERS = [
  "core",
  "cli",
  "bench",
  "server",
  "gateway",
  "device-agent",
  "operator",
  "codegen",
  "profile",
];

/** Source files (relative to `root`) whose dist/ output is missing or older than the source. */
export function staleOutputs(root: string, folders: readonly string[] = BUILT_FOLDERS): string[] {
  const stale: string[] = [];
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts")) {
        const out = join(root, "dist", relative(root, path)).replace(/\.ts$/, ".js");
        if (!existsSync(out) || statSync(out).mtimeMs < statSync(path).mtimeMs)
          stale.push(relative(root, path));
      }
    }
  };
  for (const f of folders) if (existsSync(join(root, f))) walk(join(root, f));
  return stale;
}

export default function setup(): void {
  const root = packageRoot();
  const stale = staleOutputs(root);
  if (stale.length === 0) return;
  process.stderr.write(
    `fresh-dist: dist/ is older than ${stale.slice(0, 3).join(", ")}${stale.length > 3 ? ` and ${stale.length - 3} more` : ""}; rebuilding (tsc -p tsconfig.build.json)\n`,
  );
  try {
    execFileSync(
      process.execPath,
      [join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.build.json"],
      { cwd: root, stdio: "inherit" },
    );
  } catch {
    // tsc still writes dist/ when it reports type errors (the typecheck step fails on those);
    // the tests only need the output to be current, checked next.
  }
  const still = staleOutputs(root);
  if (still.length > 0)
    throw new Error(`fresh-dist: tsc left dist/ older than ${still.join(", ")}`);
}
