/**
 * The Device&Server server of `ddnn profile` as its own process (`ddnn server`, as it runs in a
 * deployment), so that its CPU can be read from /proc/<pid>/stat apart from the devices, the
 * broker and the profiler that share this machine: the capacity model's CPU per offload is the
 * server's own, not the wall time its replies carry.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
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

/** A TCP port free on the loopback now (the server binds it right after). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (typeof address !== "object" || !address) throw new Error("no free port");
  return address.port;
}

export async function startServerProcess(s: ServerSettings): Promise<ServerProcess> {
  // Chosen here rather than read from its log: the server logs at the fog's level (warn by
  // default), and per-request logging would cost the CPU this process is started to measure.
  const port = await freePort();
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
    String(port),
    "--log-level",
    s.logLevel,
  ];
  const child: ChildProcess = spawn(process.execPath, args, {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  child.stderr!.on("data", (d: Buffer) => {
    log = (log + d.toString()).slice(-8000);
  });
  const failed = new Promise<never>((_, reject) =>
    child.once("exit", (code) =>
      reject(new Error(`ddnn server exited (${code}) before it was ready:\n${log.trim()}`)),
    ),
  );
  failed.catch(() => {});
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const kill = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.kill("SIGTERM");
    await exited;
    clearTimeout(kill);
  };
  try {
    const until = Date.now() + 60_000;
    for (;;) {
      const res = await Promise.race([
        fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined),
        failed,
      ]);
      if (res?.ok) break;
      if (Date.now() > until) throw new Error(`ddnn server not ready within 60 s:\n${log.trim()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } catch (err) {
    await stop();
    throw err;
  }
  const pid = child.pid!;
  return { pid, port, cpuMs: () => processCpuMs(pid), close: stop };
}
