/**
 * A benchmark's helper in its own Node process (the echo, the protocol-floor server): started with
 * an IPC channel, ready when it sends its first message, stopped with SIGTERM.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { packageRoot } from "../../cli/paths.js";

export interface HelperProcess {
  readonly pid: number | undefined;
  /** The helper's first IPC message (its "ready", or what it tells, such as a port). */
  readonly ready: unknown;
  stop(): Promise<void>;
}

/** Runs dist/bench/support/<script> with `args` and waits until it says it is ready. */
export async function startHelper(script: string, args: readonly string[]): Promise<HelperProcess> {
  const child = spawn(
    process.execPath,
    [join(packageRoot(), "dist", "bench", "support", script), ...args],
    {
      stdio: ["ignore", "ignore", "inherit", "ipc"],
    },
  );
  // SIGTERM lets it close its broker connection; SIGKILL after 5 s so a benchmark never hangs on it.
  const stop = () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      const kill = setTimeout(() => child.kill("SIGKILL"), 5_000);
      child.once("exit", () => {
        clearTimeout(kill);
        resolve();
      });
      child.kill("SIGTERM");
    });
  let ready: unknown;
  try {
    ready = await new Promise<unknown>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${script} did not start within 15 s`)), 15_000);
      child.once("message", (m) => {
        clearTimeout(t);
        resolve(m);
      });
      child.once("exit", (c) => {
        clearTimeout(t);
        reject(new Error(`${script} exited (${c}) before it was ready`));
      });
      child.once("error", (err) => {
        clearTimeout(t);
        reject(new Error(`${script} could not start: ${err.message}`));
      });
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { pid: child.pid, ready, stop };
}
