/**
 * A real Mosquitto 2 for benchmarks, on a free loopback port, configured from the project's
 * config/mosquitto.conf (set_tcp_nodelay true). Same approach as test/support/mosquitto.ts, kept
 * here so that `npm run build` does not have to compile the test tree into dist/.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { packageRoot } from "../../cli/paths.js";

export interface Broker {
  readonly url: string;
  readonly port: number;
  readonly pid: number | undefined;
  stop(): Promise<void>;
}

export const mosquittoBinary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"].find((p) =>
  existsSync(p),
);

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      const port = typeof a === "object" && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until)
      throw new Error(`mosquitto did not listen on ${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function startMosquitto(): Promise<Broker> {
  if (!mosquittoBinary)
    throw new Error("mosquitto is not installed (Debian: apt-get install mosquitto)");
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "ddnn-bench-mosquitto-"));
  const conf = join(dir, "mosquitto.conf");
  const base = readFileSync(join(packageRoot(), "config", "mosquitto.conf"), "utf8");
  if (!/^set_tcp_nodelay true$/m.test(base))
    throw new Error("config/mosquitto.conf does not set set_tcp_nodelay true");
  writeFileSync(conf, base.replace(/^listener 1883$/m, `listener ${port} 127.0.0.1`));
  const child: ChildProcess = spawn(mosquittoBinary, ["-c", conf], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const exited = new Promise<never>((_, reject) =>
    child.once("exit", (code) => reject(new Error(`mosquitto exited (${code}): ${stderr}`))),
  );
  exited.catch(() => {});
  await Promise.race([waitForPort(port, 10_000), exited]);
  return {
    url: `mqtt://127.0.0.1:${port}`,
    port,
    pid: child.pid,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => child.kill("SIGKILL"), 5_000);
          child.once("exit", () => {
            clearTimeout(t);
            resolve();
          });
          child.kill("SIGTERM");
        });
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
