/**
 * A real Mosquitto 2 on a free loopback port, configured from the project's config/mosquitto.conf
 * (set_tcp_nodelay true), for benchmarks and tests. It lives under bench/ because `npm run build`
 * compiles bench/ into dist/ but not the test tree; tests import it through test/support.
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
  /** The running broker's process id (changes on restart). */
  readonly pid: number | undefined;
  /** SIGKILL, as a crash would. */
  kill(): Promise<void>;
  /** Starts it again on the same port. */
  restart(): Promise<void>;
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

export interface MosquittoOptions {
  /** Serve MQTT over TLS (mqtts://) with this PEM certificate and key (readable by the mosquitto user). */
  readonly tls?: { readonly certFile: string; readonly keyFile: string };
  /** Refuse anonymous clients: only those of this password file (made with mosquitto_passwd). */
  readonly passwordFile?: string;
}

export async function startMosquitto(options: MosquittoOptions = {}): Promise<Broker> {
  if (!mosquittoBinary)
    throw new Error("mosquitto is not installed (Debian: apt-get install mosquitto)");
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "ddnn-bench-mosquitto-"));
  const conf = join(dir, "mosquitto.conf");
  const base = readFileSync(join(packageRoot(), "config", "mosquitto.conf"), "utf8");
  if (!/^set_tcp_nodelay true$/m.test(base))
    throw new Error("config/mosquitto.conf does not set set_tcp_nodelay true");
  const tls = options.tls
    ? `\ncertfile ${options.tls.certFile}\nkeyfile ${options.tls.keyFile}`
    : "";
  let text = base.replace(/^listener 1883$/m, `listener ${port} 127.0.0.1${tls}`);
  if (options.passwordFile) {
    if (!/^allow_anonymous true$/m.test(text))
      throw new Error("config/mosquitto.conf no longer says allow_anonymous true");
    text = text.replace(
      /^allow_anonymous true$/m,
      `allow_anonymous false\npassword_file ${options.passwordFile}`,
    );
  }
  writeFileSync(conf, text);
  let child: ChildProcess | undefined;
  const launch = async () => {
    const c = spawn(mosquittoBinary, ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
    child = c;
    let stderr = "";
    c.stderr?.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    const exited = new Promise<never>((_, reject) =>
      c.once("exit", (code) => reject(new Error(`mosquitto exited (${code}): ${stderr}`))),
    );
    exited.catch(() => {});
    await Promise.race([waitForPort(port, 10_000), exited]);
  };
  const halt = async (signal: NodeJS.Signals) => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => c.kill("SIGKILL"), 5_000);
      c.once("exit", () => {
        clearTimeout(t);
        resolve();
      });
      c.kill(signal);
    });
  };
  await launch();
  return {
    url: `${options.tls ? "mqtts" : "mqtt"}://127.0.0.1:${port}`,
    port,
    get pid() {
      return child?.pid;
    },
    kill: () => halt("SIGKILL"),
    restart: launch,
    async stop() {
      await halt("SIGTERM");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
