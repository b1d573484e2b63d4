/**
 * Runs `ddnn server` (or `ddnn gateway`, `ddnn agent`) as its own process, as it runs in production, so that the load generator's
 * work does not show up in the server's event loop and the operating system schedules the two
 * like it would on separate machines. Optionally preloads the event-loop-delay probe.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { packageRoot } from "../../cli/paths.js";
import type { EldReading } from "./eld-probe.js";

export interface ServerProcessOptions {
  /** Which tier: `ddnn server` (default) or `ddnn gateway`; both take the same pool flags. */
  readonly program?: "server" | "gateway";
  readonly bundle: string;
  readonly broker: string;
  /** <namespace>/<name>: distinct models let several servers share one broker without mixing. */
  readonly model: string;
  /** Omitted: the program's default. */
  readonly workers?: number;
  /** Omitted: the program's default. */
  readonly maxBatch?: number;
  /** Omitted: the server's default. */
  readonly maxDelayMs?: number;
  readonly sharedSubscriptions?: boolean;
  readonly maxQueue?: number;
  readonly extraArgs?: readonly string[];
}

export interface ServerProcess extends EldControls {
  readonly pid: number;
  readonly httpPort: number;
  readonly args: readonly string[];
  /** Prometheus text from /metrics. */
  metrics(): Promise<string>;
  /** SIGTERM (graceful: answers in-flight requests), SIGKILL after 10 s. Returns the exit code. */
  stop(): Promise<number | null>;
}

export async function startServerProcess(o: ServerProcessOptions): Promise<ServerProcess> {
  const program = o.program ?? "server";
  return startTierProcess(program, [
    "--bundle",
    o.bundle,
    "--broker",
    o.broker,
    "--model",
    o.model,
    ...(o.workers !== undefined ? ["--workers", String(o.workers)] : []),
    ...(o.maxBatch !== undefined ? ["--max-batch", String(o.maxBatch)] : []),
    ...(o.maxDelayMs !== undefined ? ["--max-delay-ms", String(o.maxDelayMs)] : []),
    ...(o.maxQueue !== undefined ? ["--max-queue", String(o.maxQueue)] : []),
    "--shared-subscriptions",
    String(o.sharedSubscriptions ?? true),
    ...(o.extraArgs ?? []),
  ]);
}

/**
 * A gateway with the server behind it, both in their own processes under one model name: the
 * server runs the bundle's last stage (`lastStage`), the gateway the middle ones with `o`'s pool
 * settings, so what the gateway's exits do not answer goes on to the server. Returns the gateway
 * first.
 */
export async function startGatewayChain(
  o: Omit<ServerProcessOptions, "program">,
  lastStage: string,
): Promise<{ gateway: ServerProcess; server: ServerProcess }> {
  const server = await startServerProcess({
    bundle: o.bundle,
    broker: o.broker,
    model: o.model,
    workers: 2,
    maxBatch: 32,
    extraArgs: ["--stages", lastStage],
  });
  try {
    const gateway = await startServerProcess({ ...o, program: "gateway" });
    return { gateway, server };
  } catch (err) {
    await server.stop();
    throw err;
  }
}

/**
 * The tier a benchmark measures, in its own process: `ddnn server` with `o`, or with `gateway`
 * a gateway chain (startGatewayChain) whose gateway is measured. `stop` stops all it started.
 */
export async function startMeasuredTier(
  o: Omit<ServerProcessOptions, "program">,
  gateway: { lastStage: string } | undefined,
): Promise<{ measured: ServerProcess; stop(): Promise<void> }> {
  if (!gateway) {
    const server = await startServerProcess(o);
    return { measured: server, stop: async () => void (await server.stop()) };
  }
  const chain = await startGatewayChain(o, gateway.lastStage);
  return {
    measured: chain.gateway,
    async stop() {
      await chain.gateway.stop();
      await chain.server.stop();
    },
  };
}

/**
 * bench/support/lean-server.ts in its own process with the event-loop-delay probe, as a
 * ServerProcess: /metrics gives its batch counts only, and `args` is empty.
 */
export async function startLeanServer(o: {
  bundle: string;
  broker: string;
  model: string;
  maxBatch: number;
}): Promise<ServerProcess> {
  const script = join(packageRoot(), "dist", "bench", "support", "lean-server.js");
  const child = spawnWithProbe(
    script,
    [
      "--broker",
      o.broker,
      "--bundle",
      o.bundle,
      "--model",
      o.model,
      "--max-batch",
      String(o.maxBatch),
    ],
    "inherit",
  );
  const exited = new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  const httpPort = await new Promise<number>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("lean server did not start in 60 s")), 60_000);
    child.on("message", (m: { type?: string; port?: number }) => {
      if (m?.type !== "lean-ready" || typeof m.port !== "number") return;
      clearTimeout(t);
      resolve(m.port);
    });
    void exited.then((c) => {
      clearTimeout(t);
      reject(new Error(`lean server exited (${c}) before it was ready`));
    });
  }).catch((err: unknown) => {
    child.kill("SIGKILL");
    throw err;
  });
  const controls = probeControls(child);
  return {
    pid: child.pid ?? -1,
    httpPort,
    args: [],
    ...controls,
    metrics: async () => (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text(),
    stop: () => stopChild(child, exited),
  };
}

/** The log message each program writes, with its HTTP port, once it serves. */
const readyMessages = {
  server: "server ready",
  gateway: "edge ready",
  agent: "device agent ready",
};

/**
 * Runs `ddnn <program> ...args` (plus --http-host 127.0.0.1 --http-port 0 --log-level info) with
 * the event-loop-delay probe preloaded, and waits until its /readyz answers.
 */
export async function startTierProcess(
  program: keyof typeof readyMessages,
  programArgs: readonly string[],
): Promise<ServerProcess> {
  const cli = join(packageRoot(), "dist", "cli", "main.js");
  const args = [
    program,
    "--http-host",
    "127.0.0.1",
    "--http-port",
    "0",
    "--log-level",
    "info",
    ...programArgs,
  ];
  const readyMessage = readyMessages[program];
  const child = spawnWithProbe(cli, args, "pipe");
  let log = "";
  let httpPort = 0;
  let lineBuf = "";
  let ready: (() => void) | undefined;
  const readyLine = new Promise<void>((r) => {
    ready = r;
  });
  child.stderr?.on("data", (d: Buffer) => {
    const text = d.toString();
    log = (log + text).slice(-8000);
    lineBuf += text;
    const lines = lineBuf.split("\n");
    lineBuf = lines.pop() ?? "";
    for (const line of lines) {
      if (httpPort || !line.includes(readyMessage)) continue;
      try {
        const parsed = JSON.parse(line) as { port?: number };
        if (typeof parsed.port === "number") {
          httpPort = parsed.port;
          ready?.();
        }
      } catch {
        // not a log line
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  const failed = exited.then((code) => {
    throw new Error(`ddnn ${program} exited (${code}) before it was ready:\n${log}`);
  });
  failed.catch(() => {});
  const timeout = (ms: number, what: string) =>
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`${what} within ${ms} ms:\n${log}`)), ms).unref(),
    );
  try {
    await Promise.race([readyLine, failed, timeout(60_000, `ddnn ${program} did not start`)]);
    const until = Date.now() + 20_000;
    for (;;) {
      const res = await fetch(`http://127.0.0.1:${httpPort}/readyz`).catch(() => undefined);
      if (res?.ok) break;
      if (Date.now() > until) throw new Error(`ddnn ${program} not ready within 20 s:\n${log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } catch (err) {
    child.kill("SIGKILL");
    throw err;
  }

  const probe_ = probeControls(child);
  return {
    pid: child.pid ?? -1,
    httpPort,
    args,
    eld: probe_.eld,
    readEld: probe_.readEld,
    async metrics() {
      const res = await fetch(`http://127.0.0.1:${httpPort}/metrics`);
      return res.text();
    },
    stop: () => stopChild(child, exited),
  };
}

/**
 * `node [DDNN_BENCH_SERVER_NODE_ARGS] --import eld-probe.js <script> ...args` with an IPC channel
 * (the probe's), stdout ignored and stderr as given.
 */
function spawnWithProbe(
  script: string,
  args: readonly string[],
  stderr: "pipe" | "inherit",
): ChildProcess {
  const probe = join(packageRoot(), "dist", "bench", "support", "eld-probe.js");
  for (const f of [script, probe])
    if (!existsSync(f)) throw new Error(`${f} is missing: run npm run build first`);
  // Diagnostics, e.g. DDNN_BENCH_SERVER_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof".
  const nodeArgs = (process.env.DDNN_BENCH_SERVER_NODE_ARGS ?? "").split(" ").filter(Boolean);
  return spawn(
    process.execPath,
    [...nodeArgs, "--import", pathToFileURL(probe).href, script, ...args],
    {
      stdio: ["ignore", "ignore", stderr, "ipc"],
    },
  );
}

/** SIGTERM (a tier answers what it holds, then exits), SIGKILL after 10 s; the exit code. */
async function stopChild(child: ChildProcess, exited: Promise<number | null>) {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const kill = setTimeout(() => child.kill("SIGKILL"), 10_000);
  child.kill("SIGTERM");
  const code = await exited;
  clearTimeout(kill);
  return code;
}

export interface EldControls {
  eld(command: "start" | "stop"): Promise<void>;
  readEld(): Promise<EldReading>;
}

/** Talks to the event-loop-delay probe preloaded in `child` (spawned with an IPC channel). */
export function probeControls(child: ChildProcess): EldControls {
  const request = <T>(msg: string, match: (m: unknown) => m is T): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.off("message", on);
        reject(new Error(`process ${child.pid} did not answer ${msg} over IPC`));
      }, 5_000);
      const on = (m: unknown) => {
        if (!match(m)) return;
        clearTimeout(timer);
        child.off("message", on);
        resolve(m);
      };
      child.on("message", on);
      child.send(msg);
    });
  const isAck =
    (cmd: string) =>
    (m: unknown): m is { type: "ack" } =>
      typeof m === "object" && m !== null && (m as { for?: unknown }).for === cmd;
  return {
    async eld(command) {
      await request(`eld:${command}`, isAck(`eld:${command}`));
    },
    readEld: () =>
      request(
        "eld:read",
        (m): m is EldReading =>
          typeof m === "object" && m !== null && (m as { type?: unknown }).type === "eld",
      ),
  };
}

/**
 * An idle Node process with the same probe: its event-loop delay under the same load is what the
 * machine's scheduler alone costs a loop that does nothing (the control for the server's reading).
 */
export async function startCanary(): Promise<EldControls & { stop(): Promise<void> }> {
  const probe = join(packageRoot(), "dist", "bench", "support", "eld-probe.js");
  const child = spawn(
    process.execPath,
    ["--import", pathToFileURL(probe).href, "-e", "setInterval(() => {}, 1 << 30)"],
    { stdio: ["ignore", "ignore", "inherit", "ipc"] },
  );
  await new Promise<void>((resolve, reject) => {
    child.once("spawn", () => resolve());
    child.once("error", reject);
  });
  const controls = probeControls(child);
  // The probe is loaded once it answers.
  const until = Date.now() + 10_000;
  for (;;) {
    try {
      await controls.eld("stop");
      break;
    } catch (err) {
      if (Date.now() > until) throw err;
    }
  }
  return {
    ...controls,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}

/** Sum of a Prometheus counter or histogram series (all label sets) from /metrics text. */
export function metricSum(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== " " && rest[0] !== "{") continue;
    const value = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (Number.isFinite(value)) sum += value;
  }
  return sum;
}
