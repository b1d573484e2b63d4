/**
 * A real Kubernetes cluster on this machine, for the end-to-end tests and for a person
 * (`npm run cluster -- up|down|status`): etcd, kube-apiserver, kube-controller-manager (every
 * controller), kube-scheduler, kube-proxy (iptables), CoreDNS, and per node a containerd (runc,
 * the CNI bridge plugin) and a kubelet. Everything lives on the bridges of ./network.ts, which are
 * routed and checked before any program starts, so no packet of the cluster leaves the machine.
 *
 * The programs run detached, so the cluster outlives the process that started it; their pids, the
 * kernel settings to restore and the node layout are in `<dir>/run/cluster.json`, which `down()`
 * (from any process) reads to stop everything, unmount, and remove the network. One cluster per
 * machine: the bridge names and addresses are fixed.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { request } from "node:https";
import { homedir } from "node:os";
import { join } from "node:path";
import { tierNodeLabel } from "../../operator/spec.js";
import { freePort, kubeBinDir, kubeVersion, REPO_ROOT } from "./control-plane.js";
import {
  API_IP,
  API_PORT,
  checkNetwork,
  DNS_IP,
  KUBERNETES_SERVICE_IP,
  NODE_RANGE,
  type NodeNet,
  nodeNet,
  POD_RANGE,
  removeKubeletChains,
  restoreSysctls,
  SERVICE_RANGE,
  saveSysctls,
  setUpNetwork,
  tearDownNetwork,
} from "./network.js";

/** Pinned with the kube binaries; scripts/cluster.sh builds them into the same cache. */
export const COREDNS_VERSION = "v1.14.7";
export const CRICTL_VERSION = "v1.34.0";
export const PAUSE_IMAGE = "localhost/pause:3.10";
/** The labels the operator's default node selection reads (operator/spec.ts): one per tier. */
export const TIER_LABELS = {
  device: tierNodeLabel("device"),
  edge: tierNodeLabel("edge"),
  server: tierNodeLabel("server"),
};

export interface ClusterOptions {
  /** Nodes, each with its own containerd and kubelet (default 2). */
  nodes?: number;
  /** podman images to load into every node besides the pause image (default: appImages()). */
  images?: string[];
  /** Called with a line for each step (default: nothing). */
  log?: (line: string) => void;
}

export interface NodeInfo extends NodeNet {
  name: string;
  /** The node's labels, set by its kubelet when it registers. */
  labels: Record<string, string>;
  containerdSocket: string;
}

interface Proc {
  name: string;
  pid: number;
  bin: string;
}

interface State {
  dir: string;
  nodes: NodeInfo[];
  procs: Proc[];
  sysctls: Record<string, string>;
  startedAt: string;
  startupMs?: number;
  steps?: Record<string, number>;
  etcdUrl: string;
  adminToken: string;
}

function cacheDir(): string {
  return (
    process.env.DDNN_CACHE_DIR ??
    join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "ddnn-fog")
  );
}

/** Where the cluster keeps its state (`run/`, wiped by down) and node images (`images/`, kept). */
export function clusterDir(): string {
  return process.env.DDNN_CLUSTER_DIR ?? "/var/lib/ddnn-fog-cluster";
}

const etcdDataDir = () =>
  join(existsSync("/dev/shm") ? "/dev/shm" : clusterDir(), "ddnn-fog-cluster-etcd");

/** The project's images as scripts/image/build.sh names them in podman. */
export function appImages(): string[] {
  const version = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")).version;
  return [`localhost/ddnn-fog:${version}`, "localhost/eclipse-mosquitto:2"];
}

/** Names an imported image also gets in each node, so a Pod naming the public image finds it. */
const ALIASES: Record<string, string> = {
  "localhost/eclipse-mosquitto:2": "docker.io/library/eclipse-mosquitto:2",
};

interface Binaries {
  etcd: string;
  apiserver: string;
  controllerManager: string;
  scheduler: string;
  proxy: string;
  kubelet: string;
  kubectl: string;
  coredns: string;
  crictl: string;
  containerd: string;
  containerdShim: string;
  runc: string;
}

function onPath(name: string, pkg: string): string {
  for (const d of ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/bin", "/sbin"]) {
    const p = join(d, name);
    if (existsSync(p)) return p;
  }
  throw new Error(`${name} is missing: Debian package ${pkg} (bash scripts/setup.sh installs it)`);
}

export function binaries(): Binaries {
  const kube = kubeBinDir();
  const built = (name: string, where: string, how: string): string => {
    const p = join(where, name);
    if (!existsSync(p)) throw new Error(`${p} is missing: run ${how}`);
    return p;
  };
  const nodeBins = "bash scripts/cluster.sh build (or scripts/control-plane.sh --node)";
  for (const plugin of ["bridge", "host-local", "loopback"]) {
    if (!existsSync(`/usr/lib/cni/${plugin}`))
      throw new Error(
        `/usr/lib/cni/${plugin} is missing: Debian package containernetworking-plugins`,
      );
  }
  onPath("iptables", "iptables");
  onPath("conntrack", "conntrack");
  onPath("ip", "iproute2");
  return {
    etcd: onPath("etcd", "etcd-server"),
    apiserver: built("kube-apiserver", kube, nodeBins),
    controllerManager: built("kube-controller-manager", kube, nodeBins),
    scheduler: built("kube-scheduler", kube, nodeBins),
    proxy: built("kube-proxy", kube, nodeBins),
    kubelet: built("kubelet", kube, nodeBins),
    kubectl: built("kubectl", kube, nodeBins),
    coredns: built("coredns", join(cacheDir(), `coredns-${COREDNS_VERSION}`), nodeBins),
    crictl: built("crictl", join(cacheDir(), `crictl-${CRICTL_VERSION}`), nodeBins),
    containerd: onPath("containerd", "containerd"),
    containerdShim: onPath("containerd-shim-runc-v2", "containerd"),
    runc: onPath("runc", "runc"),
  };
}

/**
 * The environment of every program the cluster runs and of kubectl: without proxy settings, and
 * with the cluster's ranges in NO_PROXY, so that nothing (kubectl, the API server's webhook
 * client, containerd's pulls) sends a cluster address to a proxy off this machine.
 */
export function clusterEnv(base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(base)) if (!/^(https?|all|no)_proxy$/i.test(k)) env[k] = v;
  const local = [
    NODE_RANGE,
    SERVICE_RANGE,
    POD_RANGE,
    "127.0.0.0/8",
    "localhost",
    ".svc",
    ".cluster.local",
  ].join(",");
  env.NO_PROXY = local;
  env.no_proxy = local;
  return env;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function run(
  bin: string,
  args: readonly string[],
  options: { timeoutMs?: number; input?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(
      bin,
      args,
      { timeout: options.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024, env: clusterEnv() },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

async function runOk(bin: string, args: readonly string[], timeoutMs?: number): Promise<string> {
  const r = await run(bin, args, { timeoutMs });
  if (r.code !== 0)
    throw new Error(`${bin} ${args.join(" ")} failed (${r.code}): ${r.stderr.slice(-2000)}`);
  return r.stdout;
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // State after the command name in parentheses; a zombie has ended.
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** Whether `pid` still runs `bin` (a pid the kernel reused is left alone). */
function runs(pid: number, bin: string): boolean {
  if (!alive(pid)) return false;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0] === bin;
  } catch {
    return false;
  }
}

async function stopPid(pid: number, bin: string, graceMs: number): Promise<void> {
  if (!runs(pid, bin)) return;
  try {
    process.kill(pid, "SIGTERM");
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (!alive(pid)) return;
    await sleep(100);
  }
  if (runs(pid, bin)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Gone meanwhile.
    }
  }
  while (alive(pid)) await sleep(50);
}

/** HTTPS GET with a bearer token, verifying the cluster CA. */
function httpsGet(
  url: string,
  token: string,
  ca: string,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { method: "GET", headers: { Authorization: `Bearer ${token}` }, ca, timeout: 5000 },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => {
          body += c;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end();
  });
}

async function httpOk(url: string): Promise<boolean> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(3000) });
    return res.ok;
  } catch {
    return false;
  }
}

interface Pki {
  dir: string;
  ca: string;
}

function openssl(args: string[]): void {
  execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
}

/** A CA, and leaf certificates signed by it (P-256 keys: fast to make). */
function makePki(dir: string, nodes: readonly NodeInfo[]): Pki {
  mkdirSync(dir, { recursive: true });
  const p = (f: string) => join(dir, f);
  openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", p("ca.key")]);
  openssl([
    "req",
    "-x509",
    "-new",
    "-key",
    p("ca.key"),
    "-days",
    "30",
    "-subj",
    "/CN=ddnn-test-cluster-ca",
    "-out",
    p("ca.crt"),
  ]);
  const leaf = (name: string, subject: string, ext: string) => {
    openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", p(`${name}.key`)]);
    openssl(["req", "-new", "-key", p(`${name}.key`), "-subj", subject, "-out", p(`${name}.csr`)]);
    writeFileSync(
      p(`${name}.ext`),
      `basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n${ext}\n`,
    );
    openssl([
      "x509",
      "-req",
      "-in",
      p(`${name}.csr`),
      "-CA",
      p("ca.crt"),
      "-CAkey",
      p("ca.key"),
      "-set_serial",
      `0x${randomBytes(8).toString("hex")}`,
      "-days",
      "30",
      "-extfile",
      p(`${name}.ext`),
      "-out",
      p(`${name}.crt`),
    ]);
  };
  leaf(
    "apiserver",
    "/CN=kube-apiserver",
    `extendedKeyUsage=serverAuth\nsubjectAltName=IP:${API_IP},IP:${KUBERNETES_SERVICE_IP},IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost`,
  );
  leaf(
    "apiserver-kubelet-client",
    "/O=system:masters/CN=kube-apiserver-kubelet-client",
    "extendedKeyUsage=clientAuth",
  );
  for (const n of nodes)
    leaf(
      `kubelet-${n.name}`,
      `/O=system:nodes/CN=system:node:${n.name}`,
      `extendedKeyUsage=serverAuth\nsubjectAltName=IP:${n.ip},DNS:${n.name}`,
    );
  // The service account signing key.
  openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", p("sa.key")]);
  openssl(["ec", "-in", p("sa.key"), "-pubout", "-out", p("sa.pub")]);
  return { dir, ca: p("ca.crt") };
}

function kubeconfig(ca: string, user: string, token: string): string {
  return JSON.stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [
      {
        name: "ddnn-test-cluster",
        cluster: {
          server: `https://${API_IP}:${API_PORT}`,
          "certificate-authority-data": readFileSync(ca).toString("base64"),
        },
      },
    ],
    users: [{ name: user, user: { token } }],
    contexts: [{ name: user, context: { cluster: "ddnn-test-cluster", user } }],
    "current-context": user,
  });
}

/** Node N: its name, network and labels (node 1 devices; node 2 the edge and the server). */
function plannedNodes(count: number, runDir: string): NodeInfo[] {
  return Array.from({ length: count }, (_, i) => {
    const net = nodeNet(i + 1);
    const name = `ddnn-node-${i + 1}`;
    // One node serves every tier (a one-node lab); with two, the second is the gateway board.
    const tiers: (keyof typeof TIER_LABELS)[] =
      count === 1 ? ["device", "edge", "server"] : i === 0 ? ["device"] : ["edge", "server"];
    return {
      ...net,
      name,
      labels: Object.fromEntries(tiers.map((t) => [TIER_LABELS[t], "true"])),
      containerdSocket: join(runDir, name, "containerd", "containerd.sock"),
    };
  });
}

export class Cluster {
  private readonly children = new Map<string, ChildProcess>();

  private constructor(private state: State) {}

  get dir(): string {
    return this.state.dir;
  }
  private get runDir(): string {
    return join(this.state.dir, "run");
  }
  get nodes(): readonly NodeInfo[] {
    return this.state.nodes;
  }
  /** The admin's kubeconfig (system:masters). */
  get kubeconfigPath(): string {
    return join(this.runDir, "admin.kubeconfig");
  }
  get caFile(): string {
    return join(this.runDir, "pki", "ca.crt");
  }
  get server(): string {
    return `https://${API_IP}:${API_PORT}`;
  }
  /** Milliseconds from the start of up() to a cluster with every node Ready. */
  get startupMs(): number | undefined {
    return this.state.startupMs;
  }
  get steps(): Record<string, number> {
    return this.state.steps ?? {};
  }
  logFile(name: string): string {
    return join(this.runDir, "logs", `${name}.log`);
  }

  private static statePath(dir = clusterDir()): string {
    return join(dir, "run", "cluster.json");
  }

  private save(): void {
    writeFileSync(Cluster.statePath(this.state.dir), JSON.stringify(this.state, null, 2));
  }

  /** The running cluster of this machine, if its programs are all still alive. */
  static attach(dir = clusterDir()): Cluster | undefined {
    const path = Cluster.statePath(dir);
    if (!existsSync(path)) return undefined;
    const state = JSON.parse(readFileSync(path, "utf8")) as State;
    if (state.startupMs === undefined) return undefined;
    if (!state.procs.every((p) => runs(p.pid, p.bin))) return undefined;
    return new Cluster(state);
  }

  /** Stops what a previous cluster left (a crashed run included); a no-op when there is none. */
  static async down(dir = clusterDir(), log: (line: string) => void = () => {}): Promise<void> {
    const path = Cluster.statePath(dir);
    if (!existsSync(path)) {
      // No state, but perhaps a bridge of a run that died before writing it.
      tearDownNetwork([nodeNet(1), nodeNet(2)]);
      return;
    }
    const state = JSON.parse(readFileSync(path, "utf8")) as State;
    await new Cluster(state).stop(log);
  }

  /**
   * Starts a cluster (after stopping any previous one). Needs root, the programs of
   * scripts/programs.txt, and the binaries and images of `bash scripts/cluster.sh build`.
   */
  static async up(options: ClusterOptions = {}): Promise<Cluster> {
    const log = options.log ?? (() => {});
    const bins = binaries();
    const count = options.nodes ?? 2;
    const images = options.images ?? appImages();
    const dir = clusterDir();
    await Cluster.down(dir, log);
    const runDir = join(dir, "run");
    rmSync(runDir, { recursive: true, force: true });
    rmSync(etcdDataDir(), { recursive: true, force: true });
    mkdirSync(join(runDir, "logs"), { recursive: true });
    const nodes = plannedNodes(count, runDir);
    const cluster = new Cluster({
      dir,
      nodes,
      procs: [],
      sysctls: saveSysctls(),
      startedAt: new Date().toISOString(),
      etcdUrl: "",
      adminToken: randomBytes(24).toString("hex"),
      steps: {},
    });
    cluster.save();
    try {
      await cluster.boot(bins, images, log);
    } catch (err) {
      log(`up failed; stopping what started (logs: ${join(runDir, "logs")})`);
      await cluster.stop(log);
      throw err;
    }
    return cluster;
  }

  private step(name: string, since: number): void {
    this.state.steps = { ...this.state.steps, [name]: Math.round(performance.now() - since) };
  }

  private launch(
    name: string,
    bin: string,
    args: string[],
    env: NodeJS.ProcessEnv = clusterEnv(),
  ): ChildProcess {
    const fd = openSync(this.logFile(name), "a");
    let child: ChildProcess;
    try {
      child = spawn(bin, args, { detached: true, stdio: ["ignore", fd, fd], env });
    } finally {
      closeSync(fd);
    }
    child.unref();
    if (child.pid === undefined) throw new Error(`${bin} did not start`);
    this.children.set(name, child);
    this.state.procs.push({ name, pid: child.pid, bin });
    this.save();
    return child;
  }

  tail(name: string, lines = 40): string {
    try {
      return readFileSync(this.logFile(name), "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "";
    }
  }

  /** Polls `ready` until it holds; fails at once when the named program has exited. */
  private async waitFor(
    what: string,
    ready: () => Promise<boolean>,
    programs: string[],
    timeoutMs = 120_000,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      for (const name of programs) {
        const p = this.state.procs.find((x) => x.name === name);
        if (p && !alive(p.pid))
          throw new Error(`${name} exited while waiting for ${what}:\n${this.tail(name)}`);
      }
      if (await ready().catch(() => false)) return;
      await sleep(200);
    }
    throw new Error(
      `${what} not ready after ${timeoutMs} ms\n${programs.map((p) => `--- ${p}\n${this.tail(p, 15)}`).join("\n")}`,
    );
  }

  private async boot(bins: Binaries, images: string[], log: (line: string) => void): Promise<void> {
    const t0 = performance.now();
    const run = this.runDir;
    const nodes = this.state.nodes;
    log(`network: bridges, routes, guard (${nodes.length} node(s))`);
    setUpNetwork(nodes);
    this.step("network", t0);

    const pki = makePki(join(run, "pki"), nodes);
    const pk = (f: string) => join(pki.dir, f);
    this.step("pki", t0);
    const tokens = {
      admin: this.state.adminToken,
      controllerManager: randomBytes(24).toString("hex"),
      scheduler: randomBytes(24).toString("hex"),
      proxy: randomBytes(24).toString("hex"),
      dns: randomBytes(24).toString("hex"),
      nodes: nodes.map(() => randomBytes(24).toString("hex")),
    };
    writeFileSync(
      pk("tokens.csv"),
      [
        `${tokens.admin},ddnn-test-admin,admin,"system:masters"`,
        `${tokens.controllerManager},system:kube-controller-manager,kcm`,
        `${tokens.scheduler},system:kube-scheduler,scheduler`,
        `${tokens.proxy},system:kube-proxy,proxy`,
        // CoreDNS reads Services, EndpointSlices, Namespaces and Pods cluster-wide.
        `${tokens.dns},ddnn-test-coredns,coredns,"system:masters"`,
        ...nodes.map((n, i) => `${tokens.nodes[i]},system:node:${n.name},${n.name},"system:nodes"`),
        "",
      ].join("\n"),
    );
    const kc = (name: string, user: string, token: string) => {
      const path = join(run, `${name}.kubeconfig`);
      writeFileSync(path, kubeconfig(pki.ca, user, token));
      return path;
    };
    kc("admin", "admin", tokens.admin);

    // Every program below binds or sends only to addresses that checkNetwork just verified.
    checkNetwork(nodes);

    // etcd and every node's containerd first: they need nothing else.
    const etcdClient = await freePort();
    const etcdPeer = await freePort();
    this.state.etcdUrl = `http://127.0.0.1:${etcdClient}`;
    this.launch("etcd", bins.etcd, [
      "--name=default",
      `--data-dir=${etcdDataDir()}`,
      `--listen-client-urls=${this.state.etcdUrl}`,
      `--advertise-client-urls=${this.state.etcdUrl}`,
      `--listen-peer-urls=http://127.0.0.1:${etcdPeer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeer}`,
      `--initial-cluster=default=http://127.0.0.1:${etcdPeer}`,
      "--log-level=warn",
      "--logger=zap",
    ]);
    for (const n of nodes) this.startContainerd(bins, n);

    // Per node: the pause image, then the others (one import at a time into a node's store).
    const paused = nodes.map((n) => this.loadPause(n));
    const imported = Promise.all(
      paused.map((p, i) => p.then(() => this.loadImages(nodes[i]!, images, log))),
    );
    // Keep the rejections for later, without an unhandled-rejection crash meanwhile.
    imported.catch(() => {});
    for (const p of paused) p.catch(() => {});

    await this.waitFor("etcd", () => httpOk(`${this.state.etcdUrl}/health`), ["etcd"]);
    writeFileSync(
      join(run, "audit-policy.yaml"),
      [
        "apiVersion: audit.k8s.io/v1",
        "kind: Policy",
        "omitStages: [RequestReceived, ResponseStarted]",
        "rules:",
        "  - level: Metadata",
        '    userGroups: ["system:serviceaccounts:ddnn-system"]',
        "  - level: None",
        "",
      ].join("\n"),
    );
    log("kube-apiserver");
    this.launch("kube-apiserver", bins.apiserver, [
      `--etcd-servers=${this.state.etcdUrl}`,
      `--bind-address=${API_IP}`,
      `--advertise-address=${API_IP}`,
      `--secure-port=${API_PORT}`,
      `--cert-dir=${pki.dir}`,
      `--tls-cert-file=${pk("apiserver.crt")}`,
      `--tls-private-key-file=${pk("apiserver.key")}`,
      `--client-ca-file=${pki.ca}`,
      `--token-auth-file=${pk("tokens.csv")}`,
      "--authorization-mode=Node,RBAC",
      "--enable-admission-plugins=NodeRestriction",
      "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
      `--service-account-key-file=${pk("sa.pub")}`,
      `--service-account-signing-key-file=${pk("sa.key")}`,
      `--service-cluster-ip-range=${SERVICE_RANGE}`,
      "--kubelet-preferred-address-types=InternalIP",
      `--kubelet-certificate-authority=${pki.ca}`,
      `--kubelet-client-certificate=${pk("apiserver-kubelet-client.crt")}`,
      `--kubelet-client-key=${pk("apiserver-kubelet-client.key")}`,
      "--allow-privileged=true",
      `--audit-policy-file=${join(run, "audit-policy.yaml")}`,
      `--audit-log-path=${join(run, "logs", "audit.log")}`,
      "--audit-log-format=json",
      "--profiling=false",
      "--v=0",
    ]);
    await this.waitFor("kube-apiserver", async () => (await this.get("/readyz")).status === 200, [
      "kube-apiserver",
      "etcd",
    ]);
    this.step("apiserver", t0);

    log("kube-controller-manager, kube-scheduler, CoreDNS, kube-proxy");
    this.launch("kube-controller-manager", bins.controllerManager, [
      `--kubeconfig=${kc("controller-manager", "system:kube-controller-manager", tokens.controllerManager)}`,
      "--controllers=*",
      "--use-service-account-credentials=true",
      `--service-account-private-key-file=${pk("sa.key")}`,
      `--root-ca-file=${pki.ca}`,
      `--cluster-signing-cert-file=${pki.ca}`,
      `--cluster-signing-key-file=${pk("ca.key")}`,
      `--cluster-cidr=${POD_RANGE}`,
      "--allocate-node-cidrs=false",
      `--service-cluster-ip-range=${SERVICE_RANGE}`,
      "--leader-elect=false",
      "--secure-port=0",
      "--v=0",
    ]);
    this.launch("kube-scheduler", bins.scheduler, [
      `--kubeconfig=${kc("scheduler", "system:kube-scheduler", tokens.scheduler)}`,
      "--leader-elect=false",
      "--secure-port=0",
      "--v=0",
    ]);
    const dnsKubeconfig = kc("coredns", "ddnn-test-coredns", tokens.dns);
    // Cluster names only: no forward plugin, so a name outside the cluster is answered NXDOMAIN
    // here and no query ever goes to a resolver off this machine.
    writeFileSync(
      join(run, "Corefile"),
      [
        "cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {",
        `  bind ${DNS_IP}`,
        "  errors",
        `  ready ${DNS_IP}:8181`,
        "  kubernetes cluster.local in-addr.arpa ip6.arpa {",
        `    kubeconfig ${dnsKubeconfig}`,
        "    pods insecure",
        "    fallthrough in-addr.arpa ip6.arpa",
        "  }",
        "  cache 30",
        "}",
        ".:53 {",
        `  bind ${DNS_IP}`,
        "  template ANY ANY {",
        "    rcode NXDOMAIN",
        "  }",
        "}",
        "",
      ].join("\n"),
    );
    this.launch("coredns", bins.coredns, ["-conf", join(run, "Corefile")]);
    const proxyConfig = join(run, "kube-proxy.yaml");
    writeFileSync(
      proxyConfig,
      JSON.stringify({
        apiVersion: "kubeproxy.config.k8s.io/v1alpha1",
        kind: "KubeProxyConfiguration",
        clientConnection: {
          kubeconfig: kc("kube-proxy", "system:kube-proxy", tokens.proxy),
        },
        mode: "iptables",
        // One kube-proxy for the machine: every node shares the host's network namespace, so a
        // second one would write the same iptables chains.
        hostnameOverride: nodes[0]!.name,
        clusterCIDR: POD_RANGE,
        healthzBindAddress: `${API_IP}:10256`,
        metricsBindAddress: `${API_IP}:10249`,
        nodePortAddresses: nodes.map((n) => `${n.ip}/32`),
        iptables: { localhostNodePorts: false },
        // Leave the machine's conntrack settings alone.
        conntrack: {
          maxPerCore: 0,
          min: 0,
          tcpEstablishedTimeout: "0s",
          tcpCloseWaitTimeout: "0s",
        },
      }),
    );
    this.launch("kube-proxy", bins.proxy, [`--config=${proxyConfig}`, "--v=0"]);

    // The pause image before the kubelets ask for a sandbox.
    await Promise.all(paused);
    this.step("containerd+pause", t0);
    log("kubelets");
    for (const [i, n] of nodes.entries()) this.startKubelet(bins, n, kc, tokens.nodes[i]!, pki);

    await this.waitFor(
      "every node Ready",
      async () => (await this.readyNodes()).length === nodes.length,
      nodes.flatMap((n) => [`kubelet-${n.name}`, `containerd-${n.name}`]),
    );
    this.step("nodes Ready", t0);
    await this.waitFor("CoreDNS", () => httpOk(`http://${DNS_IP}:8181/ready`), ["coredns"]);
    await this.waitFor("kube-proxy", () => httpOk(`http://${API_IP}:10256/healthz`), [
      "kube-proxy",
    ]);
    await this.waitFor(
      "the default ServiceAccount",
      async () =>
        (await this.get("/api/v1/namespaces/default/serviceaccounts/default")).status === 200,
      ["kube-controller-manager"],
    );
    this.step("cluster ready", t0);
    await imported;
    this.step("images", t0);
    for (const tar of this.archives.values()) rmSync(await tar, { force: true });
    this.state.startupMs = Math.round(performance.now() - t0);
    this.save();
    log(`up in ${(this.state.startupMs / 1000).toFixed(1)} s`);
  }

  private startContainerd(bins: Binaries, n: NodeInfo): void {
    const base = join(this.runDir, n.name);
    const cniConf = join(base, "cni");
    mkdirSync(cniConf, { recursive: true });
    const root = join(this.state.dir, "images", n.name);
    mkdirSync(root, { recursive: true });
    // The node's own CNI folder (podman's /etc/cni/net.d holds a config whose plugins are absent).
    writeFileSync(
      join(cniConf, "10-ddnn-bridge.conflist"),
      JSON.stringify({
        cniVersion: "1.0.0",
        name: n.name,
        plugins: [
          {
            type: "bridge",
            bridge: n.bridge,
            isGateway: true,
            ipMasq: false,
            hairpinMode: true,
            ipam: {
              type: "host-local",
              ranges: [[{ subnet: n.podSubnet, gateway: n.podGateway }]],
              routes: [{ dst: "0.0.0.0/0" }],
              dataDir: join(base, "cni-ipam"),
            },
          },
        ],
      }),
    );
    const state = join(base, "containerd");
    const config = join(base, "containerd.toml");
    writeFileSync(
      config,
      [
        "version = 2",
        `root = "${root}"`,
        `state = "${state}"`,
        "oom_score = 0",
        // Only what a node needs; the others probe file systems or devices this machine lacks.
        'disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]',
        "[grpc]",
        `  address = "${n.containerdSocket}"`,
        "[ttrpc]",
        `  address = "${n.containerdSocket}.ttrpc"`,
        "[debug]",
        '  address = ""',
        "[metrics]",
        '  address = ""',
        '[plugins."io.containerd.grpc.v1.cri"]',
        `  sandbox_image = "${PAUSE_IMAGE}"`,
        // No CAP_SYS_RESOURCE here: the pause sandbox's oom_score_adj -998 would kill runc.
        "  restrict_oom_score_adj = true",
        "  disable_apparmor = true",
        "  enable_selinux = false",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        '[plugins."io.containerd.grpc.v1.cri".containerd]',
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
        '  runtime_type = "io.containerd.runc.v2"',
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
        `  BinaryName = "${bins.runc}"`,
        `  Root = "${join(state, "runc")}"`,
        "  SystemdCgroup = false",
        '[plugins."io.containerd.grpc.v1.cri".cni]',
        '  bin_dir = "/usr/lib/cni"',
        `  conf_dir = "${cniConf}"`,
        "  max_conf_num = 1",
        "",
      ].join("\n"),
    );
    // The shims find containerd-shim-runc-v2 and runc on PATH.
    this.launch(`containerd-${n.name}`, bins.containerd, ["--config", config], {
      ...clusterEnv(),
      PATH: `/usr/sbin:/usr/bin:/sbin:/bin`,
    });
  }

  /** ctr against one node's containerd, in the CRI namespace. */
  ctr(node: NodeInfo, args: readonly string[], timeoutMs?: number): Promise<string> {
    return runOk("ctr", ["--address", node.containerdSocket, "-n", "k8s.io", ...args], timeoutMs);
  }

  /** crictl against one node's containerd. */
  crictl(node: NodeInfo, args: readonly string[], timeoutMs?: number): Promise<string> {
    const crictl = join(cacheDir(), `crictl-${CRICTL_VERSION}`, "crictl");
    return runOk(
      crictl,
      [`--runtime-endpoint=unix://${node.containerdSocket}`, "--timeout=30s", ...args],
      timeoutMs,
    );
  }

  private async containerdUp(n: NodeInfo): Promise<void> {
    await this.waitFor(
      `containerd of ${n.name}`,
      async () =>
        existsSync(n.containerdSocket) &&
        (await run("ctr", ["--address", n.containerdSocket, "version"], { timeoutMs: 5000 }))
          .code === 0,
      [`containerd-${n.name}`],
    );
  }

  private async loadPause(n: NodeInfo): Promise<void> {
    await this.containerdUp(n);
    // Sandboxes a previous run left in this node's image store (a crash) go first.
    await this.crictl(n, ["rmp", "--all", "--force"]).catch(() => "");
    await this.loadImages(n, [PAUSE_IMAGE], () => {});
  }

  /**
   * Loads podman images into a node's containerd (`podman save | ctr images import`), skipping
   * those already there with the same image id; gives each its alias (ALIASES).
   */
  async loadImages(
    n: NodeInfo,
    images: readonly string[],
    log: (line: string) => void,
  ): Promise<void> {
    await this.containerdUp(n);
    const record = join(this.state.dir, "images", `${n.name}.json`);
    const loaded: Record<string, string> = existsSync(record)
      ? (JSON.parse(readFileSync(record, "utf8")) as Record<string, string>)
      : {};
    const present = new Set((await this.ctr(n, ["images", "ls", "-q"])).split("\n"));
    const ids = new Map<string, string>();
    for (const image of images) {
      const r = await run("podman", ["image", "inspect", "--format", "{{.Id}}", image]);
      if (r.code !== 0)
        throw new Error(
          `image ${image} is not in podman's store: run bash scripts/image/build.sh (${r.stderr.trim().split("\n").pop()})`,
        );
      ids.set(image, r.stdout.trim());
    }
    const todo = images.filter((i) => loaded[i] !== ids.get(i) || !present.has(i));
    if (todo.length > 0) {
      const started = performance.now();
      await this.ctr(n, ["images", "import", await this.archive(todo)], 600_000);
      for (const i of todo) loaded[i] = ids.get(i)!;
      writeFileSync(record, JSON.stringify(loaded, null, 2));
      log(
        `${n.name}: imported ${todo.join(", ")} in ${((performance.now() - started) / 1000).toFixed(1)} s`,
      );
    }
    for (const image of images) {
      const alias = ALIASES[image];
      if (alias) await this.ctr(n, ["images", "tag", "--force", image, alias]);
    }
  }

  private readonly archives = new Map<string, Promise<string>>();

  /** One `podman save` per set of images, shared by the nodes that need the same set. */
  private archive(images: readonly string[]): Promise<string> {
    const key = [...images].sort().join(" ");
    let tar = this.archives.get(key);
    if (!tar) {
      const path = join(this.runDir, `images-${randomBytes(4).toString("hex")}.tar`);
      tar = runOk(
        "podman",
        ["save", "-m", "--format", "docker-archive", "-o", path, ...images],
        600_000,
      ).then(() => path);
      this.archives.set(key, tar);
    }
    return tar;
  }

  private startKubelet(
    bins: Binaries,
    n: NodeInfo,
    kc: (name: string, user: string, token: string) => string,
    token: string,
    pki: Pki,
  ): void {
    const base = join(this.runDir, n.name);
    const resolv = join(base, "resolv.conf");
    // Pods with dnsPolicy Default get this, not the machine's resolvers.
    writeFileSync(resolv, `nameserver ${DNS_IP}\n`);
    const config = join(base, "kubelet.yaml");
    writeFileSync(
      config,
      JSON.stringify({
        apiVersion: "kubelet.config.k8s.io/v1beta1",
        kind: "KubeletConfiguration",
        address: n.ip,
        port: 10250,
        readOnlyPort: 0,
        healthzBindAddress: n.ip,
        healthzPort: 10248,
        tlsCertFile: join(pki.dir, `kubelet-${n.name}.crt`),
        tlsPrivateKeyFile: join(pki.dir, `kubelet-${n.name}.key`),
        authentication: {
          anonymous: { enabled: false },
          webhook: { enabled: true },
          x509: { clientCAFile: pki.ca },
        },
        authorization: { mode: "Webhook" },
        containerRuntimeEndpoint: `unix://${n.containerdSocket}`,
        // This machine: cgroup v1 (hybrid), no systemd, shared with other work.
        failCgroupV1: false,
        cgroupDriver: "cgroupfs",
        cgroupsPerQOS: false,
        enforceNodeAllocatable: [],
        failSwapOn: false,
        evictionHard: {
          "memory.available": "100Mi",
          "nodefs.available": "1%",
          "imagefs.available": "1%",
          "nodefs.inodesFree": "1%",
        },
        // The images cannot be pulled again: never collect them.
        imageGCHighThresholdPercent: 100,
        imageGCLowThresholdPercent: 99,
        clusterDNS: [DNS_IP],
        clusterDomain: "cluster.local",
        resolvConf: resolv,
        podLogsDir: join(base, "pod-logs"),
        maxPods: 40,
        serializeImagePulls: false,
        nodeStatusUpdateFrequency: "4s",
        syncFrequency: "10s",
      }),
    );
    const labels = Object.entries(n.labels)
      .map(([k, v]) => `${k}=${v}`)
      .join(",");
    this.launch(
      `kubelet-${n.name}`,
      bins.kubelet,
      [
        `--config=${config}`,
        `--kubeconfig=${kc(`kubelet-${n.name}`, `system:node:${n.name}`, token)}`,
        `--root-dir=${join(base, "kubelet")}`,
        `--hostname-override=${n.name}`,
        `--node-ip=${n.ip}`,
        `--node-labels=${labels}`,
        "--v=0",
      ],
      { ...clusterEnv(), PATH: "/usr/sbin:/usr/bin:/sbin:/bin" },
    );
  }

  /** GET on the API server as the admin. */
  async get(path: string): Promise<{ status: number; body: string }> {
    return httpsGet(
      `${this.server}${path}`,
      this.state.adminToken,
      readFileSync(this.caFile, "utf8"),
    );
  }

  async readyNodes(): Promise<string[]> {
    const res = await this.get("/api/v1/nodes");
    if (res.status !== 200) return [];
    const list = JSON.parse(res.body) as {
      items: {
        metadata: { name: string };
        status?: { conditions?: { type: string; status: string }[] };
      }[];
    };
    return list.items
      .filter((n) => n.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"))
      .map((n) => n.metadata.name);
  }

  /** kubectl as the admin; never throws on a non-zero exit. */
  kubectl(
    args: readonly string[],
    options: { input?: string; timeoutMs?: number } = {},
  ): Promise<{ code: number; stdout: string; stderr: string }> {
    return run(join(kubeBinDir(), "kubectl"), [`--kubeconfig=${this.kubeconfigPath}`, ...args], {
      input: options.input,
      timeoutMs: options.timeoutMs ?? 120_000,
    });
  }

  async kubectlOk(
    args: readonly string[],
    options: { input?: string; timeoutMs?: number } = {},
  ): Promise<string> {
    const r = await this.kubectl(args, options);
    if (r.code !== 0) throw new Error(`kubectl ${args.join(" ")} failed (${r.code}): ${r.stderr}`);
    return r.stdout;
  }

  /** One line per program and node, for `npm run cluster -- status`. */
  async status(): Promise<string> {
    const lines = [
      `cluster in ${this.state.dir}, kube ${kubeVersion()}, up since ${this.state.startedAt}`,
    ];
    for (const p of this.state.procs)
      lines.push(
        `  ${p.name.padEnd(32)} pid ${String(p.pid).padEnd(8)} ${runs(p.pid, p.bin) ? "running" : "STOPPED"}`,
      );
    const ready = new Set(await this.readyNodes().catch(() => [] as string[]));
    for (const n of this.state.nodes)
      lines.push(
        `  node ${n.name} ${n.ip} pods ${n.podSubnet} ${Object.entries(n.labels)
          .map(([k, v]) => `${k}=${v}`)
          .join(",")} ${ready.has(n.name) ? "Ready" : "NotReady"}`,
      );
    if (this.state.startupMs !== undefined)
      lines.push(
        `  started in ${(this.state.startupMs / 1000).toFixed(1)} s ${JSON.stringify(this.state.steps)}`,
      );
    lines.push(`  logs: ${join(this.runDir, "logs")}`);
    lines.push(`kubeconfig: ${this.kubeconfigPath}`);
    return lines.join("\n");
  }

  /** Stops every program, removes every Pod, mount, rule, route and bridge; idempotent. */
  async stop(log: (line: string) => void = () => {}): Promise<void> {
    const procs = [...this.state.procs];
    const find = (name: string) => procs.find((p) => p.name === name);
    const stopNamed = async (names: string[], graceMs = 10_000) => {
      await Promise.all(
        names.map(async (name) => {
          const p = find(name);
          if (p) await stopPid(p.pid, p.bin, graceMs);
        }),
      );
    };
    log("down: kubelets");
    await stopNamed(this.state.nodes.map((n) => `kubelet-${n.name}`));
    // Every Pod sandbox through CRI, while containerd still runs: that runs CNI DEL (veths,
    // IP addresses) and removes the network namespaces.
    await Promise.all(
      this.state.nodes.map(async (n) => {
        const c = find(`containerd-${n.name}`);
        if (c && runs(c.pid, c.bin))
          await this.crictl(n, ["rmp", "--all", "--force"], 120_000).catch((err: unknown) =>
            log(`down: crictl rmp on ${n.name}: ${(err as Error).message}`),
          );
      }),
    );
    await stopNamed(this.state.nodes.map((n) => `containerd-${n.name}`));
    killShims(this.runDir);
    const proxy = find("kube-proxy");
    await stopNamed(["kube-proxy", "coredns", "kube-scheduler", "kube-controller-manager"]);
    if (proxy) {
      // kube-proxy's own cleanup of its iptables chains.
      await run(proxy.bin, ["--cleanup", "--v=0"], { timeoutMs: 60_000 }).catch(() => undefined);
    }
    await stopNamed(["kube-apiserver"]);
    await stopNamed(["etcd"]);
    unmountUnder(this.runDir);
    removeKubeletChains();
    tearDownNetwork(this.state.nodes.length > 0 ? this.state.nodes : [nodeNet(1), nodeNet(2)]);
    restoreSysctls(this.state.sysctls);
    removeLogLinks(this.runDir);
    // Keep the logs; the rest of run/ and etcd's data go.
    for (const entry of existsSync(this.runDir) ? readdirSync(this.runDir) : []) {
      if (entry !== "logs") rmSync(join(this.runDir, entry), { recursive: true, force: true });
    }
    rmSync(etcdDataDir(), { recursive: true, force: true });
    log("down: done");
  }
}

/** containerd-shim-runc-v2 processes of this cluster's containerds (they outlive containerd). */
function killShims(runDir: string): void {
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let cmd: string[];
    try {
      cmd = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
    } catch {
      continue;
    }
    if (!cmd[0]?.endsWith("containerd-shim-runc-v2")) continue;
    const address = cmd[cmd.indexOf("-address") + 1];
    if (address?.startsWith(`${runDir}/`)) {
      try {
        process.kill(Number(entry), "SIGKILL");
      } catch {
        // Gone.
      }
    }
  }
}

/** Mount points below `dir` (deepest first), from /proc/self/mountinfo. */
function mountsUnder(dir: string): string[] {
  const decode = (s: string) =>
    s.replace(/\\(\d{3})/g, (_, o) => String.fromCharCode(Number.parseInt(o, 8)));
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => decode(l.split(" ")[4] ?? ""))
    .filter((m) => m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
}

function unmountUnder(dir: string): void {
  for (let pass = 0; pass < 3; pass++) {
    const mounts = mountsUnder(dir);
    if (mounts.length === 0) return;
    for (const m of mounts) {
      try {
        execFileSync("umount", ["-l", m], { stdio: "ignore" });
      } catch {
        // Already gone with its parent.
      }
    }
  }
}

/** The kubelets link container logs into /var/log/containers; remove the links into run/. */
function removeLogLinks(runDir: string): void {
  const dir = "/var/log/containers";
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    try {
      if (readlinkSync(join(dir, name)).startsWith(`${runDir}/`)) rmSync(join(dir, name));
    } catch {
      // Not a link.
    }
  }
}
