/**
 * A real Kubernetes control plane for tests, like controller-runtime's envtest: etcd (Debian's
 * etcd-server) and kube-apiserver (built by scripts/control-plane.sh) on free loopback ports,
 * with a temporary data dir, self-made TLS, static tokens for an admin and for the operator's
 * service account identity, an audit log of the operator's requests, and optionally
 * kube-controller-manager running only the garbage collector. stop() ends every process.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { homedir, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { KubeConfig } from "@kubernetes/client-node";
import { stopProcess } from "../support/stop-process.js";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = join(here, "..", "..");

/** The operator's identity: what its ServiceAccount token would authenticate as in a cluster. */
export const OPERATOR_USER = "system:serviceaccount:ddnn-system:ddnn-operator";
export const OPERATOR_GROUPS = ["system:serviceaccounts", "system:serviceaccounts:ddnn-system"];

export type User = "admin" | "operator";

export interface ControlPlaneOptions {
  /** Also run kube-controller-manager with these controllers (e.g. ["garbagecollector"]). */
  controllers?: string[];
  /** Extra kube-apiserver flags (e.g. a short --etcd-compaction-interval). */
  apiserverArgs?: string[];
  /** Called after the API server is ready and before the controller manager starts. */
  beforeControllers?: (cp: ControlPlane) => Promise<void>;
}

export interface AuditEvent {
  verb: string;
  requestURI: string;
  userAgent?: string;
  user: { username: string };
  objectRef?: { resource?: string; subresource?: string; namespace?: string; name?: string };
  responseStatus?: { code?: number };
  stageTimestamp: string;
}

/** The kube version pinned in test/cluster/go.mod. */
export function kubeVersion(): string {
  const mod = readFileSync(join(here, "go.mod"), "utf8");
  const m = /^\s*k8s\.io\/kubernetes (v\S+)/m.exec(mod);
  if (!m) throw new Error("test/cluster/go.mod pins no k8s.io/kubernetes version");
  return m[1]!;
}

/** Where scripts/control-plane.sh caches the binaries. */
export function kubeBinDir(): string {
  if (process.env.DDNN_KUBE_BIN_DIR) return process.env.DDNN_KUBE_BIN_DIR;
  const cache =
    process.env.DDNN_CACHE_DIR ??
    join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "ddnn-fog");
  return join(cache, `kube-${kubeVersion()}`);
}

export function binary(name: "kube-apiserver" | "kube-controller-manager" | "kubectl"): string {
  const path = join(kubeBinDir(), name);
  if (!existsSync(path)) {
    throw new Error(
      `${path} is missing: run scripts/control-plane.sh once (it builds kube ${kubeVersion()}, ~10 min)`,
    );
  }
  return path;
}

function etcdBinary(): string {
  for (const p of ["/usr/bin/etcd", "/usr/local/bin/etcd"]) if (existsSync(p)) return p;
  throw new Error("etcd is missing: run scripts/control-plane.sh (installs Debian's etcd-server)");
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): ChildProcess {
  live.add(child);
  child.once("exit", () => live.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // If the test process dies without stop(), do not leave an API server behind.
    process.once("exit", () => {
      for (const c of live) c.kill("SIGKILL");
    });
  }
  return child;
}

export class ControlPlane {
  readonly tokens: Record<User, string> = {
    admin: randomBytes(24).toString("hex"),
    operator: randomBytes(24).toString("hex"),
  };
  server = "";
  /** etcd's client URL (http on loopback), for tests that act on storage (compaction). */
  etcdUrl = "";
  private etcd: ChildProcess | undefined;
  private etcdArgs: string[] = [];
  private apiserver: ChildProcess | undefined;
  private controllers: ChildProcess | undefined;
  readonly auditLog: string;

  private constructor(readonly dir: string) {
    this.auditLog = join(dir, "audit.log");
  }

  static async start(options: ControlPlaneOptions = {}): Promise<ControlPlane> {
    const base = existsSync("/dev/shm") ? "/dev/shm" : tmpdir();
    const dir = join(base, `ddnn-cp-${process.pid}-${randomBytes(3).toString("hex")}`);
    mkdirSync(dir, { recursive: true });
    const cp = new ControlPlane(dir);
    try {
      await cp.boot(options);
    } catch (err) {
      await cp.stop();
      throw err;
    }
    return cp;
  }

  /** Spawns a process whose stdout and stderr go to `<dir>/<name>.log`. */
  private spawnLogged(name: string, bin: string, args: string[]): ChildProcess {
    const fd = openSync(join(this.dir, `${name}.log`), "a");
    try {
      return track(spawn(bin, args, { stdio: ["ignore", fd, fd] }));
    } finally {
      closeSync(fd);
    }
  }

  private async boot(options: ControlPlaneOptions): Promise<void> {
    const apiserverBin = binary("kube-apiserver");
    const started = performance.now();
    const pki = join(this.dir, "pki");
    mkdirSync(pki);
    // One self-signed certificate serves as CA and serving certificate (SANs for loopback).
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        join(pki, "apiserver.key"),
        "-out",
        join(pki, "apiserver.crt"),
        "-subj",
        "/CN=ddnn-test-apiserver",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
      ],
      { stdio: "ignore" },
    );
    execFileSync("openssl", ["genrsa", "-out", join(pki, "sa.key"), "2048"], { stdio: "ignore" });
    execFileSync(
      "openssl",
      ["rsa", "-in", join(pki, "sa.key"), "-pubout", "-out", join(pki, "sa.pub")],
      {
        stdio: "ignore",
      },
    );
    writeFileSync(
      join(pki, "tokens.csv"),
      `${this.tokens.admin},ddnn-test-admin,admin-uid,"system:masters"\n` +
        `${this.tokens.operator},${OPERATOR_USER},operator-uid,"${OPERATOR_GROUPS.join(",")}"\n`,
    );
    writeFileSync(
      join(this.dir, "audit-policy.yaml"),
      [
        "apiVersion: audit.k8s.io/v1",
        "kind: Policy",
        "omitStages: [RequestReceived, ResponseStarted]",
        "rules:",
        `  - level: Metadata`,
        `    users: ["${OPERATOR_USER}"]`,
        "  - level: None",
        "",
      ].join("\n"),
    );

    const etcdClient = await freePort();
    const etcdPeer = await freePort();
    this.etcdUrl = `http://127.0.0.1:${etcdClient}`;
    this.etcdArgs = [
      "--name=default",
      `--data-dir=${join(this.dir, "etcd")}`,
      `--listen-client-urls=http://127.0.0.1:${etcdClient}`,
      `--advertise-client-urls=http://127.0.0.1:${etcdClient}`,
      `--listen-peer-urls=http://127.0.0.1:${etcdPeer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeer}`,
      `--initial-cluster=default=http://127.0.0.1:${etcdPeer}`,
      "--log-level=error",
      "--logger=zap",
    ];
    this.etcd = this.spawnLogged("etcd", etcdBinary(), this.etcdArgs);

    const port = await freePort();
    this.server = `https://127.0.0.1:${port}`;
    this.apiserver = this.spawnLogged("kube-apiserver", apiserverBin, [
      `--etcd-servers=http://127.0.0.1:${etcdClient}`,
      `--secure-port=${port}`,
      "--bind-address=127.0.0.1",
      "--advertise-address=127.0.0.1",
      "--endpoint-reconciler-type=none",
      `--cert-dir=${pki}`,
      `--tls-cert-file=${join(pki, "apiserver.crt")}`,
      `--tls-private-key-file=${join(pki, "apiserver.key")}`,
      `--token-auth-file=${join(pki, "tokens.csv")}`,
      "--authorization-mode=RBAC",
      "--service-account-issuer=https://kubernetes.default.svc",
      `--service-account-key-file=${join(pki, "sa.pub")}`,
      `--service-account-signing-key-file=${join(pki, "sa.key")}`,
      // Only an allocation range for Service objects; no traffic goes there.
      "--service-cluster-ip-range=10.96.0.0/24",
      "--allow-privileged=true",
      "--disable-admission-plugins=ServiceAccount",
      `--audit-policy-file=${join(this.dir, "audit-policy.yaml")}`,
      `--audit-log-path=${this.auditLog}`,
      "--audit-log-mode=blocking",
      "--audit-log-format=json",
      "--profiling=false",
      "--v=0",
      ...(options.apiserverArgs ?? []),
    ]);
    this.writeKubeconfigs();
    await this.waitReady(120_000);
    const readyMs = performance.now() - started;
    writeFileSync(join(this.dir, "timing.txt"), `apiserver ready in ${readyMs.toFixed(0)} ms\n`);

    if (options.beforeControllers) await options.beforeControllers(this);
    if (options.controllers?.length) {
      this.controllers = this.spawnLogged(
        "kube-controller-manager",
        binary("kube-controller-manager"),
        [
          `--kubeconfig=${this.kubeconfigPath("admin")}`,
          `--controllers=${options.controllers.join(",")}`,
          "--leader-elect=false",
          "--secure-port=0",
          "--use-service-account-credentials=false",
          "--concurrent-gc-syncs=5",
          "--v=0",
        ],
      );
    }
  }

  /** How long the API server took to become ready (from the key generation on). */
  startupMs(): number {
    const m = /(\d+) ms/.exec(readFileSync(join(this.dir, "timing.txt"), "utf8"));
    return Number(m?.[1] ?? Number.NaN);
  }

  private async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const kc = this.kubeConfig("admin");
    let last = "";
    while (Date.now() < deadline) {
      if (this.apiserver?.exitCode !== null && this.apiserver?.exitCode !== undefined)
        throw new Error(
          `kube-apiserver exited (${this.apiserver.exitCode}); see ${join(this.dir, "kube-apiserver.log")}:\n${this.tail("kube-apiserver")}`,
        );
      if (this.etcd?.exitCode !== null && this.etcd?.exitCode !== undefined)
        throw new Error(`etcd exited (${this.etcd.exitCode}):\n${this.tail("etcd")}`);
      try {
        const res = await rawGet(kc, `${this.server}/readyz`);
        if (res.status === 200) return;
        last = `${res.status} ${res.body.slice(0, 300)}`;
      } catch (err) {
        last = (err as Error).message;
      }
      await sleep(250);
    }
    throw new Error(
      `kube-apiserver not ready after ${timeoutMs} ms: ${last}\n${this.tail("kube-apiserver")}`,
    );
  }

  tail(name: string, lines = 30): string {
    try {
      return readFileSync(join(this.dir, `${name}.log`), "utf8")
        .split("\n")
        .slice(-lines)
        .join("\n");
    } catch {
      return "";
    }
  }

  kubeconfigPath(user: User): string {
    return join(this.dir, `${user}.kubeconfig`);
  }

  private writeKubeconfigs(): void {
    const ca = readFileSync(join(this.dir, "pki", "apiserver.crt")).toString("base64");
    for (const user of ["admin", "operator"] as const) {
      writeFileSync(
        this.kubeconfigPath(user),
        JSON.stringify({
          apiVersion: "v1",
          kind: "Config",
          clusters: [
            {
              name: "ddnn-test",
              cluster: { server: this.server, "certificate-authority-data": ca },
            },
          ],
          users: [{ name: user, user: { token: this.tokens[user] } }],
          contexts: [{ name: user, context: { cluster: "ddnn-test", user, namespace: "default" } }],
          "current-context": user,
        }),
      );
    }
  }

  kubeConfig(user: User): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromFile(this.kubeconfigPath(user));
    return kc;
  }

  /** Runs the kubectl built with the API server; never throws on a non-zero exit. */
  kubectl(
    args: readonly string[],
    options: { user?: User; input?: string } = {},
  ): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const child = execFile(
        binary("kubectl"),
        [`--kubeconfig=${this.kubeconfigPath(options.user ?? "admin")}`, ...args],
        { timeout: 60_000, maxBuffer: 16 * 1024 * 1024 },
        (err, stdout, stderr) => {
          const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
          resolve({ code, stdout, stderr });
        },
      );
      if (options.input !== undefined) child.stdin?.end(options.input);
    });
  }

  /** kubectl that must succeed; returns stdout. */
  async kubectlOk(
    args: readonly string[],
    options: { user?: User; input?: string } = {},
  ): Promise<string> {
    const r = await this.kubectl(args, options);
    if (r.code !== 0) throw new Error(`kubectl ${args.join(" ")} failed (${r.code}): ${r.stderr}`);
    return r.stdout;
  }

  /**
   * Compacts etcd's history up to its current revision (through etcd's v3 JSON gateway; Debian's
   * etcd-server ships no etcdctl), as the API server's periodic compaction would; returns the
   * revision. A watch from an older resourceVersion that reaches etcd then fails with 410 Gone.
   */
  async compactEtcd(): Promise<number> {
    const post = async (path: string, body: unknown) => {
      const res = await fetch(`${this.etcdUrl}${path}`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      const text = await res.text();
      if (!res.ok) throw new Error(`etcd ${path}: ${res.status} ${text}`);
      return JSON.parse(text) as { header?: { revision?: string } };
    };
    // Any range answers with the store's current revision in its header.
    const range = await post("/v3/kv/range", { key: Buffer.from("/").toString("base64") });
    const revision = Number(range.header?.revision);
    if (!Number.isSafeInteger(revision) || revision < 1)
      throw new Error(`etcd answered no revision: ${JSON.stringify(range)}`);
    await post("/v3/kv/compaction", { revision: String(revision), physical: true });
    return revision;
  }

  /**
   * Kills etcd (SIGKILL, as a crash or a node loss would), keeps it down `downMs`, and starts it
   * again on the same ports and data directory; resolves once the API server answers /readyz.
   */
  async restartEtcd(downMs = 0): Promise<void> {
    const old = this.etcd;
    if (old && old.exitCode === null && old.signalCode === null) {
      const exited = new Promise<void>((r) => old.once("exit", () => r()));
      old.kill("SIGKILL");
      await exited;
    }
    await new Promise((r) => setTimeout(r, downMs));
    this.etcd = this.spawnLogged("etcd", etcdBinary(), this.etcdArgs);
    await this.waitReady(120_000);
  }

  /** Audit events (ResponseComplete) of the operator's identity so far. */
  auditEvents(): AuditEvent[] {
    if (!existsSync(this.auditLog)) return [];
    return readFileSync(this.auditLog, "utf8")
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map((l) => JSON.parse(l) as AuditEvent);
  }

  async stop(): Promise<void> {
    await stopProcess(this.controllers);
    await stopProcess(this.apiserver, 10_000);
    await stopProcess(this.etcd);
    if (!process.env.DDNN_KEEP_CONTROL_PLANE) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A GET with the kubeconfig's credentials, outside any client library (readiness polling). */
export async function rawGet(
  kc: KubeConfig,
  url: string,
): Promise<{ status: number; body: string }> {
  const https = await import("node:https");
  const opts: import("node:https").RequestOptions = {};
  await kc.applyToHTTPSOptions(opts);
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ...opts, agent: undefined, timeout: 5000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        body += c;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
  });
}
