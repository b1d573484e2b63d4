import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { packageRoot } from "../../cli/paths.js";

const exec = promisify(execFile);

export const root = packageRoot();
/** Debian's interpreter has python3-torch; the first python3 on PATH may not. */
export const python = process.env.DDNN_PYTHON ?? "/usr/bin/python3";

/** Runs `python -m trainer ...` from the repository root and returns stdout. */
export async function trainer(args: readonly string[], timeoutMs = 300_000): Promise<string> {
  const { stdout } = await exec(python, ["-m", "trainer", ...args], {
    cwd: root,
    timeout: timeoutMs,
    maxBuffer: 256 * 1024 * 1024,
  });
  return stdout;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the built `ddnn` command (dist/ must be built: npm run build). */
export async function ddnn(args: readonly string[], timeoutMs = 300_000): Promise<CliResult> {
  try {
    const { stdout, stderr } = await exec(
      process.execPath,
      [join(root, "dist", "cli", "main.js"), ...args],
      {
        cwd: root,
        timeout: timeoutMs,
        maxBuffer: 256 * 1024 * 1024,
      },
    );
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return {
      code: typeof e.code === "number" ? e.code : -1,
      stdout: e.stdout ?? "",
      stderr: e.stderr ?? "",
    };
  }
}
