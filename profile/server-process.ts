/**
 * The Device&Server server of `ddnn profile` as its own process (`ddnn server`, as it runs in a
 * deployment), so that its CPU can be read from /proc/<pid>/stat apart from the devices, the
 * broker and the profiler that share this machine: the capacity model's CPU per offload is the
 * server's own, not the wall time its replies carry.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** What `startLocalFog` hands over: the settings the server would have run with in-process. */
export interface ServerSettings {
  readonly bundle: string;
  readonly broker: string;
  readonly brokerCa?: string | undefined;
  readonly model?: string | undefined;
  readonly stages?: readonly string[] | undefined;
  readonly workers: number;
  readonly maxBatch: number;
  readonly maxDelayMs: number;
  readonly sharedSubscriptions: boolean;
  readonly insecure?: boolean | undefined;
  readonly logLevel: string;
}

export interface ServerProcess {
  readonly pid: number;
  readonly port: number;
  /** CPU time (user + system, every thread) the process has used so far, ms. */
  cpuMs(): number;
  close(): Promise<void>;
}

/** Linux's USER_HZ: /proc/<pid>/stat counts CPU time in ticks of 1/100 s. */
const TICKS_PER_S = 100;

/** utime + stime of a process, ms (fields 14 and 15 of /proc/<pid>/stat). */
export function processCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_S;
}

export function canReadProcessCpu(): boolean {
  return existsSync(`/proc/${process.pid}/stat`);
}

function cliPath(): string {
  const built = fileURLToPath(new URL("../cli/main.js", import.meta.url));
  if (existsSync(built)) return built;
  return fileURLToPath(new URL("../dist/cli/main.js", import.meta.url));
}

export async function startServerProcess(s: ServerSettings): Promise<ServerProcess> {
  const args = [
    cliPath(),
    "server",
    "--bundle",
    s.bundle,
    "--broker",
    s.broker,
    ...(s.brokerCa ? ["--broker-ca", s.brokerCa] : []),
    ...(s.model ? ["--model", s.model] : []),
    ...(s.stages ?? []).flatMap((st) => ["--stages", st]),
    "--workers",
    String(s.workers),
    "--max-batch",
    String(s.maxBatch),
    "--max-delay-ms",
    String(s.maxDelayMs),
    "--shared-subscriptions",
    String(s.sharedSubscriptions),
    ...(s.insecure ? ["--insecure"] : []),
    "--http-host",
    "127.0.0.1",
    "--http-port",
    "0",
    // Its ready line (with the HTTP port) is logged at info.
    "--log-level",
    "info",
  ];
  const child: ChildProcess = spawn(process.execPath, args, {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  let port = 0;
  let pending = "";
  const ready = new Promise<void>((resolve, reject) => {
    child.stderr!.on("data", (d: Buffer) => {
      const text = d.toString();
      log = (log + text).slice(-8000);
      pending += text;
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        if (port || !line.includes("server ready")) continue;
        try {
          const parsed = JSON.parse(line) as { port?: number };
          if (typeof parsed.port === "number") {
            port = parsed.port;
            resolve();
          }
        } catch {
          // not a JSON log line
        }
      }
    });
    child.once("exit", (code) =>
      reject(new Error(`ddnn server exited (${code}) before it was ready:\n${log.trim()}`)),
    );
    setTimeout(
      () => reject(new Error(`ddnn server not ready within 60 s:\n${log.trim()}`)),
      60_000,
    ).unref();
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const kill = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.kill("SIGTERM");
    await exited;
    clearTimeout(kill);
  };
  try {
    await ready;
    const until = Date.now() + 20_000;
    for (;;) {
      const res = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
      if (res?.ok) break;
      if (Date.now() > until) throw new Error(`ddnn server not ready within 20 s:\n${log.trim()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } catch (err) {
    await stop();
    throw err;
  }
  const pid = child.pid!;
  return { pid, port, cpuMs: () => processCpuMs(pid), close: stop };
}
