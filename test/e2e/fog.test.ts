/**
 * ddnn-fog on a real cluster (test/cluster/cluster.ts: real kubelets, containerd, runc, CNI,
 * kube-proxy, CoreDNS): what a user does first, checked as a user would see it.
 *
 * 1. `helm install` of charts/ddnn-fog with the locally built image: the operator runs as Pods under
 *    the chart's ServiceAccount, one replica leads, both are Ready.
 * 2. `kubectl apply` of a DDNNModel for the shipped fashion-deep bundle (a ConfigMap made by
 *    `ddnn bundle pack`) with a managed broker: the owned objects appear, the Pods run the real
 *    image, and the status reaches Ready=True from what the kubelets report.
 * 3. Images POSTed to the device agent's /v1/infer by Pod IP get the exit stages and labels of
 *    `ddnn eval`, some answered by the server through the in-cluster broker.
 * 4. A threshold change and a new bundle roll out; answers follow them.
 * 5. Killed server, broker and device Pods are replaced; devices answer degraded meanwhile.
 * 6. A three-stage bundle puts its edge stage on the edge node (the default node selection).
 * 7. `kubectl delete` of the model removes its objects; `helm uninstall` removes the operator,
 *    whose API requests the chart's RBAC never refused meanwhile (the audit log).
 *
 * Run with `bash scripts/cluster.sh e2e` (DDNN_E2E=1, test/e2e/vitest.config.ts); skipped otherwise.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import type { IClientOptions } from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readIdx } from "../../core/dataset/idx.js";
import { requestDeviceIdentity } from "../../device-agent/identity.js";
import { IDENTITY_PATH } from "../../operator/device-identity.js";
import { Cluster, clusterEnv, TIER_LABELS } from "../cluster/cluster.js";
import { REPO_ROOT } from "../cluster/control-plane.js";
import { connectOutcome } from "../support/mqtt-outcome.js";

const e2e = process.env.DDNN_E2E === "1";
const OPERATOR_NS = "ddnn-system";
const RELEASE = "ddnn-fog";
const NS = "fog";
const MODEL = "fashion";
const VERSION = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")).version as string;
const IMAGE = `localhost/ddnn-fog:${VERSION}`;
const SAMPLES = 300;

interface Condition {
  type: string;
  status: string;
  reason?: string;
  observedGeneration?: number;
}
interface Pod {
  metadata: {
    name: string;
    uid: string;
    labels?: Record<string, string>;
    deletionTimestamp?: string;
  };
  spec: { nodeName?: string; serviceAccountName?: string };
  status: {
    phase?: string;
    podIP?: string;
    conditions?: Condition[];
    containerStatuses?: { image: string; imageID: string; ready: boolean }[];
  };
}
interface Model {
  metadata: { generation: number };
  status?: {
    observedGeneration?: number;
    conditions?: Condition[];
    devices?: { desired: number; ready: number; updated: number };
    bundleDigest?: string;
  };
}
interface InferAnswer {
  label: number;
  stage: string;
  tier: string;
  degraded: boolean;
  reason?: string;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `fn` until it returns something other than undefined/false. */
async function waitUntil<T>(
  what: string,
  fn: () => Promise<T | undefined | false>,
  timeoutMs = 120_000,
  everyMs = 300,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last}` : ""}`);
}

function helmBinary(): string {
  const mod = readFileSync(join(REPO_ROOT, "test", "helm", "go.mod"), "utf8");
  const version = /^\s*helm\.sh\/helm\/v3 (v\S+)/m.exec(mod)?.[1];
  const cache =
    process.env.DDNN_CACHE_DIR ??
    join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "ddnn-fog");
  return join(cache, `helm-${version}`, "helm");
}

/** Runs the built `ddnn` with `args`; resolves to its stderr, rejects with it on failure. */
function ddnn(args: readonly string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(
      process.execPath,
      [join(REPO_ROOT, "dist", "cli", "main.js"), ...args],
      { timeout: timeoutMs },
      (err, _stdout, stderr) =>
        err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stderr),
    ),
  );
}

/** Where a shipped bundle's ConfigMap manifest goes (createBundleConfigMap) and its digest. */
function packBundle(name: string): { file: string; digest: string } {
  const manifest = readFileSync(join(REPO_ROOT, "models", name, "ddnn.json"));
  return {
    file: join(work, `${name}-configmap.yaml`),
    digest: createHash("sha256").update(manifest).digest("hex"),
  };
}

let work = "";
let suiteStart = 0;

describe.skipIf(!e2e)("ddnn-fog on a real cluster", () => {
  let cluster: Cluster;
  const helmHome = () => join(work, "helm-home");
  const helm = (args: readonly string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(
        helmBinary(),
        [`--kubeconfig=${cluster.kubeconfigPath}`, ...args],
        {
          cwd: REPO_ROOT,
          timeout: 300_000,
          env: {
            ...clusterEnv(),
            HELM_CACHE_HOME: join(helmHome(), "cache"),
            HELM_CONFIG_HOME: join(helmHome(), "config"),
            HELM_DATA_HOME: join(helmHome(), "data"),
          },
        },
        (err, stdout, stderr) =>
          resolve({
            code: err ? (typeof err.code === "number" ? err.code : 1) : 0,
            stdout,
            stderr,
          }),
      );
    });
  const getJson = async <T>(args: readonly string[]): Promise<T> =>
    JSON.parse(await cluster.kubectlOk(["get", ...args, "-o", "json"])) as T;
  const pods = async (ns: string, selector: string): Promise<Pod[]> =>
    (await getJson<{ items: Pod[] }>(["pods", "-n", ns, "-l", selector])).items.filter(
      (p) => !p.metadata.deletionTimestamp,
    );
  const ready = (p: Pod) =>
    p.status.phase === "Running" &&
    (p.status.conditions ?? []).some((c) => c.type === "Ready" && c.status === "True");
  const model = () => getJson<Model>(["ddnnmodel", MODEL, "-n", NS]);
  const condition = (m: Model, type: string) => m.status?.conditions?.find((c) => c.type === type);
  const modelReady = async () => {
    const m = await model();
    return m.status?.observedGeneration === m.metadata.generation &&
      condition(m, "Ready")?.status === "True"
      ? m
      : undefined;
  };
  const tierPods = (tier: string) =>
    pods(NS, `app.kubernetes.io/instance=${MODEL},app.kubernetes.io/component=${tier}`);

  /** What a client of the model's managed broker verifies: the issued CA and the Service's name. */
  const brokerTls = async () => {
    const cert = await getJson<{ data: Record<string, string> }>([
      "secret",
      `${MODEL}-broker-cert`,
      "-n",
      NS,
    ]);
    return {
      ca: Buffer.from(cert.data["ca.crt"]!, "base64"),
      servername: `${MODEL}-broker.${NS}.svc`,
    };
  };
  /** "connected", or why a client with `options` could not connect to the broker Pod over TLS. */
  const brokerConnect = (broker: Pod, options: IClientOptions) =>
    connectOutcome(`mqtts://${broker.status.podIP}:8883`, options);

  /** The one device agent Pod that is Ready (its IP). */
  const devicePod = () =>
    waitUntil("a Ready device Pod", async () => (await tierPods("device")).find(ready));

  const images = async () =>
    readIdx(join(REPO_ROOT, "models", "eval", "fashion-mnist-t10k-2000-images-idx3-ubyte.gz"));
  let pixels: Uint8Array;
  const image = (i: number) => pixels.subarray(i * 784, (i + 1) * 784);

  const infer = async (ip: string, i: number, timeoutMs = 30_000): Promise<InferAnswer> => {
    const res = await fetch(`http://${ip}:8080/v1/infer`, {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body: image(i),
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (!res.ok) throw new Error(`/v1/infer answered ${res.status}: ${await res.text()}`);
    return (await res.json()) as InferAnswer;
  };

  /** `ddnn eval` of a shipped bundle on the first n images: exit stage names and labels. */
  const evaluate = async (bundle: string, n: number, thresholds: string[] = []) => {
    const out = join(work, `eval-${bundle}-${n}-${thresholds.join("_")}.json`);
    await ddnn(
      [
        "eval",
        "--bundle",
        join(REPO_ROOT, "models", bundle),
        "--limit",
        String(n),
        "--predictions",
        out,
        "--json",
        ...thresholds.flatMap((t) => ["--threshold", t]),
      ],
      120_000,
    );
    const p = JSON.parse(readFileSync(out, "utf8")) as { exitStage: number[]; label: number[] };
    const stages = (
      JSON.parse(readFileSync(join(REPO_ROOT, "models", bundle, "ddnn.json"), "utf8")) as {
        stages: { name: string }[];
      }
    ).stages.map((s) => s.name);
    return p.exitStage.map((s, i) => ({ stage: stages[s]!, label: p.label[i]! }));
  };

  /** Sends images 0..n-1 to the device agent, `parallel` at a time, in order of index. */
  const inferAll = async (ip: string, n: number, parallel = 6) => {
    const answers: InferAnswer[] = new Array(n);
    let next = 0;
    await Promise.all(
      Array.from({ length: parallel }, async () => {
        while (next < n) {
          const i = next++;
          answers[i] = await infer(ip, i);
        }
      }),
    );
    return answers;
  };

  /** Compares the agent's answers with `ddnn eval`'s: stages exactly, labels as described. */
  const compare = (answers: InferAnswer[], expected: { stage: string; label: number }[]) => {
    const stageMismatch = answers.filter((a, i) => a.stage !== expected[i]!.stage).length;
    // The device decides on the features it computed itself; a later tier on the f32 features it
    // was sent (spec.wire.dtype f32): the same values ddnn eval computes.
    const deviceDecisionMismatch = answers.filter(
      (a, i) => (a.stage === "device") !== (expected[i]!.stage === "device"),
    ).length;
    const local = answers.flatMap((a, i) => (a.tier === "device" ? [i] : []));
    const remote = answers.flatMap((a, i) => (a.tier !== "device" ? [i] : []));
    const localMismatch = local.filter((i) => answers[i]!.label !== expected[i]!.label).length;
    const remoteMismatch = remote.filter((i) => answers[i]!.label !== expected[i]!.label).length;
    return {
      samples: answers.length,
      degraded: answers.filter((a) => a.degraded).length,
      stageMismatch,
      deviceDecisionMismatch,
      byDevice: local.length,
      byEdge: answers.filter((a) => a.tier === "edge").length,
      byServer: answers.filter((a) => a.tier === "server").length,
      localMismatch,
      remoteMismatch,
    };
  };

  beforeAll(async () => {
    const attached = Cluster.attach();
    if (!attached) throw new Error("no cluster: the e2e global setup starts one");
    cluster = attached;
    work = mkdtempSync(join(tmpdir(), "ddnn-e2e-"));
    pixels = (await images()).data;
    // What an earlier run on a kept cluster may have left.
    await cluster.kubectl(["delete", "namespace", NS, "--ignore-not-found", "--wait=true"], {
      timeoutMs: 180_000,
    });
    await helm(["uninstall", RELEASE, "-n", OPERATOR_NS, "--ignore-not-found", "--wait"]);
    suiteStart = Date.now();
  });

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it("helm install runs the operator as Pods under its ServiceAccount; one leads; both are Ready", async () => {
    const started = performance.now();
    const r = await helm([
      "install",
      RELEASE,
      "charts/ddnn-fog",
      "-n",
      OPERATOR_NS,
      "--create-namespace",
      "--set",
      `image.repository=localhost/ddnn-fog,image.tag=${VERSION}`,
      "--wait",
      "--timeout",
      "240s",
    ]);
    expect(r.stderr + r.stdout).toMatch(/STATUS: deployed/);
    const operators = await waitUntil("two Ready operator Pods", async () => {
      const ps = await pods(OPERATOR_NS, `app.kubernetes.io/instance=${RELEASE}`);
      return ps.length === 2 && ps.every(ready) ? ps : undefined;
    });
    for (const p of operators) {
      expect(p.spec.serviceAccountName).toBe(RELEASE);
      expect(p.status.containerStatuses?.[0]?.image).toBe(IMAGE);
    }
    const names = operators.map((p) => p.metadata.name);
    const holder = await waitUntil("a Lease held by an operator Pod", async () => {
      const leases = await getJson<{ items: { spec: { holderIdentity?: string } }[] }>([
        "leases",
        "-n",
        OPERATOR_NS,
      ]);
      return leases.items.map((l) => l.spec.holderIdentity).find((h) => h && names.includes(h));
    });
    // The leader says so on /metrics, the standby too (0), and both answer /readyz.
    const leaderOf = async (p: Pod) => {
      const text = await (await fetch(`http://${p.status.podIP}:8080/metrics`)).text();
      return Number(/^ddnn_operator_leader(?:\{[^}]*\})?\s+(\S+)/m.exec(text)?.[1]);
    };
    const flags = await waitUntil("the leader's metric", async () => {
      const f = await Promise.all(operators.map(leaderOf));
      return f.filter((x) => x === 1).length === 1 ? f : undefined;
    });
    expect(names[flags.indexOf(1)]).toBe(holder);
    for (const p of operators)
      expect((await fetch(`http://${p.status.podIP}:8080/readyz`)).status).toBe(200);
    console.info(
      `e2e: helm install to two Ready operators in ${((performance.now() - started) / 1000).toFixed(1)} s; leader ${holder}`,
    );
  });

  let digest = "";

  it("kubectl apply of a DDNNModel with a managed broker: owned objects, real image, Ready=True from the kubelets", async () => {
    const started = performance.now();
    const bundle = packBundle("fashion-deep");
    digest = bundle.digest;
    await cluster.kubectlOk(["create", "namespace", NS]);
    await createBundleConfigMap(cluster, "fashion-deep");
    await cluster.kubectlOk(["apply", "-f", "-"], { input: modelYaml("fashion-deep", digest) });
    const m = await waitUntil("Ready=True", modelReady, 240_000);
    expect(m.status?.bundleDigest).toBe(digest);
    expect(m.status?.devices).toEqual({ desired: 1, ready: 1, updated: 1 });
    for (const t of ["BundleVerified", "BrokerReady", "ServerReady", "DevicesReady"])
      expect(condition(m, t)?.status).toBe("True");

    // Every owned object, controlled by the model.
    const owned: [string, string][] = [
      ["deployment", `${MODEL}-server`],
      ["service", `${MODEL}-server`],
      ["daemonset", `${MODEL}-device`],
      ["deployment", `${MODEL}-broker`],
      ["service", `${MODEL}-broker`],
      ["configmap", `${MODEL}-broker`],
    ];
    for (const [kind, name] of owned) {
      const o = await getJson<{
        metadata: { ownerReferences?: { kind: string; name: string; controller?: boolean }[] };
      }>([kind, name, "-n", NS]);
      expect(o.metadata.ownerReferences).toEqual([
        expect.objectContaining({ kind: "DDNNModel", name: MODEL, controller: true }),
      ]);
    }
    // No edge stage in this bundle: no edge Deployment.
    expect((await cluster.kubectl(["get", "deployment", `${MODEL}-edge`, "-n", NS])).code).not.toBe(
      0,
    );

    // The Pods run the real images, each on a node the default selection allows.
    const server = (await tierPods("server")).filter(ready);
    const device = (await tierPods("device")).filter(ready);
    const broker = (await tierPods("broker")).filter(ready);
    expect(server).toHaveLength(1);
    expect(device).toHaveLength(1);
    expect(broker).toHaveLength(1);
    for (const p of [...server, ...device])
      expect(p.status.containerStatuses?.[0]?.image).toBe(IMAGE);
    expect(broker[0]!.status.containerStatuses?.[0]?.image).toMatch(/eclipse-mosquitto:2$/);
    const deviceNode = cluster.nodes.find((n) => n.name === device[0]!.spec.nodeName);
    expect(deviceNode?.labels[TIER_LABELS.device]).toBe("true");

    // Secure by default: the broker listens with TLS only, with the certificate the operator
    // issued from the chart's CA, and turns away an anonymous client.
    const brokerSvc = await getJson<{ spec: { ports: { port: number }[] } }>([
      "service",
      `${MODEL}-broker`,
      "-n",
      NS,
    ]);
    expect(brokerSvc.spec.ports.map((p) => p.port)).toEqual([8883]);
    const chartCa = await getJson<{ data: Record<string, string> }>([
      "secret",
      `${RELEASE}-broker-ca`,
      "-n",
      OPERATOR_NS,
    ]);
    const tls = await brokerTls();
    expect(tls.ca.toString("utf8")).toBe(
      Buffer.from(chartCa.data["tls.crt"]!, "base64").toString("utf8"),
    );
    expect(await brokerConnect(broker[0]!, tls)).toMatch(/Not authorized/);
    expect(await brokerConnect(broker[0]!, { servername: tls.servername })).toMatch(
      /self[- ]signed|unable to (verify|get)/,
    );

    const table = await cluster.kubectlOk(["get", "ddnn", "-n", NS]);
    expect(table).toMatch(new RegExp(`${MODEL}\\s+True\\s+1/1\\s+${digest.slice(0, 12)}`));
    console.info(
      `e2e: DDNNModel Ready in ${((performance.now() - started) / 1000).toFixed(1)} s; nodes: device ${device[0]!.spec.nodeName}, server ${server[0]!.spec.nodeName}, broker ${broker[0]!.spec.nodeName}\n${table}`,
    );
  });

  it("images POSTed to the device agent get ddnn eval's exit stages and labels, some from the server through the broker", async () => {
    const expected = await evaluate("fashion-deep", SAMPLES);
    const device = await devicePod();
    const server = (await tierPods("server")).find(ready)!;
    const exitsBefore = await serverExits(server);
    const started = performance.now();
    const answers = await inferAll(device.status.podIP!, SAMPLES);
    const wallMs = performance.now() - started;
    const c = compare(answers, expected);
    console.info(`e2e: ${SAMPLES} images in ${(wallMs / 1000).toFixed(1)} s: ${JSON.stringify(c)}`);
    expect(c.degraded).toBe(0);
    expect(c.stageMismatch).toBe(0);
    expect(c.localMismatch).toBe(0);
    expect(c.byServer).toBeGreaterThan(10);
    expect(c.byDevice).toBeGreaterThan(SAMPLES / 2);
    // The features travel as f32 (spec.wire), so the server's labels are ddnn eval's too.
    expect(c.remoteMismatch).toBe(0);
    // The server counted exactly the answers it gave.
    expect((await serverExits(server)) - exitsBefore).toBe(c.byServer);
  });

  it("ddnn profile --kubeconfig --model fashion finds the deployment and measures its Table II as ddnn eval computes it", async () => {
    const n = 200;
    const file = join(work, "profile-kube.json");
    await ddnn(
      [
        "profile",
        "--kubeconfig",
        cluster.kubeconfigPath,
        "--model",
        MODEL,
        "--namespace",
        NS,
        "--limit",
        String(n),
        "--devices",
        "2",
        "--fps",
        "50",
        "--sweep-steps",
        "4",
        "--json",
        file,
      ],
      240_000,
    );
    const p = JSON.parse(readFileSync(file, "utf8")) as {
      run: { samples: number; broker: string; encoding: { dtype: string } };
      model: { digest: string };
      tableII: {
        configuration: string;
        samples: number;
        degraded: number;
        accuracy: { local: number | null; overall: number | null; ideal: number | null };
        timingsMs: { comm: { n: number; mean: number } | null; total: { n: number } | null };
        exitRates: { stage: string; rate: number }[];
      }[];
      notes: string[];
    };
    const expected = await evaluate("fashion-deep", n);
    const serverOnly = await evaluate("fashion-deep", n, ["device=0"]);
    const truth = (
      await readIdx(
        join(REPO_ROOT, "models", "eval", "fashion-mnist-t10k-2000-labels-idx1-ubyte.gz"),
      )
    ).data;
    const accuracy = (xs: { label: number }[]) =>
      xs.filter((x, i) => x.label === truth[i]).length / xs.length;
    // The profile's agents ran with the deployment's bundle and wire settings, against its broker
    // and server (the Pods found from the DDNNModel).
    expect(p.model.digest).toBe(digest);
    expect(p.run.encoding.dtype).toBe("f32");
    expect(p.run.broker).toBe("attached");
    expect(p.notes.join("\n")).toContain(`kubernetes: DDNNModel ${NS}/${MODEL}`);
    expect(p.tableII.map((r) => r.configuration)).toEqual(["Device&Server", "Server Only (HTTP)"]);
    const [ds, http] = p.tableII;
    expect(ds!.samples).toBe(n);
    expect(ds!.degraded).toBe(0);
    expect(ds!.exitRates.map((e) => [e.stage, e.rate])).toEqual(
      ["device", "server"].map((s) => [s, expected.filter((x) => x.stage === s).length / n]),
    );
    expect(ds!.accuracy.overall).toBe(accuracy(expected));
    // The in-cluster server honours probe requests: every exit's answer, so Ideal is measured.
    expect(ds!.accuracy.ideal).not.toBeNull();
    expect(ds!.timingsMs.total!.n).toBe(n);
    expect(ds!.timingsMs.comm!.mean).toBeGreaterThan(0);
    expect(http!.samples).toBe(n);
    expect(http!.accuracy.overall).toBe(accuracy(serverOnly));
    console.info(
      `e2e: ddnn profile --kubeconfig: Device&Server Overall ${ds!.accuracy.overall}, Ideal ${ds!.accuracy.ideal}, mean T_Comm ${ds!.timingsMs.comm!.mean.toFixed(3)} ms; Server Only (HTTP) ${http!.accuracy.overall}`,
    );
  });

  it("a threshold change and a new bundle roll out: Pods replaced, status follows, answers follow", async () => {
    // Lower device threshold: more images go to the server.
    const before = await model();
    const oldDevice = await devicePod();
    await cluster.kubectlOk([
      "patch",
      "ddnnmodel",
      MODEL,
      "-n",
      NS,
      "--type=merge",
      "-p",
      JSON.stringify({ spec: { exits: { device: 0.1 } } }),
    ]);
    const load = keepAsking();
    const m1 = await waitUntil(
      "the threshold change rolled out",
      async () => {
        const m = await modelReady();
        if (!m || m.metadata.generation === before.metadata.generation) return undefined;
        const d = (await tierPods("device")).filter(ready);
        return d.length === 1 && d[0]!.metadata.uid !== oldDevice.metadata.uid ? m : undefined;
      },
      240_000,
    );
    expect(m1.status?.observedGeneration).toBe(before.metadata.generation + 1);
    const during = await load.stop();
    const n = 120;
    const c1 = compare(
      await inferAll((await devicePod()).status.podIP!, n),
      await evaluate("fashion-deep", n, ["device=0.1"]),
    );
    console.info(
      `e2e: threshold 0.1 rolled out; during it ${JSON.stringify(during)}; after ${JSON.stringify(c1)}`,
    );
    expect(c1.stageMismatch).toBe(0);
    expect(c1.localMismatch).toBe(0);
    expect(c1.remoteMismatch).toBe(0);
    expect(c1.degraded).toBe(0);

    // A new bundle (fashion-shallow) from a new ConfigMap.
    const shallow = packBundle("fashion-shallow");
    await createBundleConfigMap(cluster, "fashion-shallow");
    const oldServer = (await tierPods("server")).find(ready)!;
    const load2 = keepAsking();
    await cluster.kubectlOk(["apply", "-f", "-"], {
      input: modelYaml("fashion-shallow", shallow.digest, { device: 0.1 }),
    });
    const m2 = await waitUntil(
      "the new bundle rolled out",
      async () => {
        const m = await modelReady();
        if (!m || m.status?.bundleDigest !== shallow.digest) return undefined;
        const s = (await tierPods("server")).filter(ready);
        const d = (await tierPods("device")).filter(ready);
        return s.length === 1 &&
          d.length === 1 &&
          s[0]!.metadata.uid !== oldServer.metadata.uid &&
          m.status.devices?.updated === 1
          ? m
          : undefined;
      },
      240_000,
    );
    expect(m2.status?.observedGeneration).toBe(m2.metadata.generation);
    const during2 = await load2.stop();
    const c2 = compare(
      await inferAll((await devicePod()).status.podIP!, n),
      await evaluate("fashion-shallow", n, ["device=0.1"]),
    );
    console.info(
      `e2e: bundle fashion-shallow rolled out; during it ${JSON.stringify(during2)}; after ${JSON.stringify(c2)}`,
    );
    expect(c2.stageMismatch).toBe(0);
    expect(c2.localMismatch).toBe(0);
    expect(c2.remoteMismatch).toBe(0);
    expect(c2.degraded).toBe(0);
    expect(during.answered + during2.answered).toBeGreaterThan(0);
  });

  /**
   * Asks the current device Pod about one image the server answers (image 0 ... whichever the
   * device does not exit on), over and over until stopped; counts what came back.
   */
  const keepAsking = (everyMs = 250) => {
    const counts = { answered: 0, degraded: 0, failed: 0, reasons: {} as Record<string, number> };
    let stopped = false;
    const loop = (async () => {
      while (!stopped) {
        try {
          const d = (await tierPods("device")).find(ready);
          if (d?.status.podIP) {
            const a = await infer(d.status.podIP, 0, 4000);
            counts.answered++;
            if (a.degraded) {
              counts.degraded++;
              counts.reasons[a.reason ?? "?"] = (counts.reasons[a.reason ?? "?"] ?? 0) + 1;
            }
          }
        } catch {
          counts.failed++;
        }
        await sleep(everyMs);
      }
    })();
    return {
      counts,
      stop: async () => {
        stopped = true;
        await loop;
        return counts;
      },
    };
  };

  /** Polls the model's condition `type` until it has been False and is True again. */
  const watchCondition = (type: string) => {
    let sawFalse = false;
    let stopped = false;
    const loop = (async () => {
      while (!stopped) {
        const m = await model().catch(() => undefined);
        if (m && condition(m, type)?.status === "False") sawFalse = true;
        await sleep(150);
      }
    })();
    return {
      stop: async () => {
        stopped = true;
        await loop;
        return sawFalse;
      },
    };
  };

  it("a killed server, broker or device Pod is replaced; devices answer degraded meanwhile and offload again after", async () => {
    // Images the server answers at the current threshold (device=0.1) on fashion-shallow.
    const expected = await evaluate("fashion-shallow", 60, ["device=0.1"]);
    const offloaded = expected.flatMap((e, i) => (e.stage === "server" ? [i] : []));
    expect(offloaded.length).toBeGreaterThan(3);
    const probe = offloaded[0]!;

    for (const tier of ["server", "broker", "device"] as const) {
      // Right after a rollout the new Pods may still be starting: wait for one that serves.
      const victim = await waitUntil(`a Ready ${tier} Pod`, async () =>
        (await tierPods(tier)).find(ready),
      );
      const conditionType = {
        server: "ServerReady",
        broker: "BrokerReady",
        device: "DevicesReady",
      }[tier];
      const watch = watchCondition(conditionType);
      const killedAt = performance.now();
      await cluster.kubectlOk([
        "delete",
        "pod",
        victim.metadata.name,
        "-n",
        NS,
        "--grace-period=0",
        "--force",
      ]);
      // Meanwhile: the device still answers, degraded, when the server or broker is gone.
      const meanwhile: InferAnswer[] = [];
      if (tier !== "device") {
        await waitUntil(
          `a degraded answer while the ${tier} is gone`,
          async () => {
            const d = (await tierPods("device")).find(ready);
            if (!d) return undefined;
            const a = await infer(d.status.podIP!, probe);
            meanwhile.push(a);
            return a.degraded ? a : undefined;
          },
          60_000,
          100,
        );
      }
      // Replaced, Ready, and offloading again with the server's answers.
      await waitUntil(
        `a new ${tier} Pod`,
        async () => {
          const ps = (await tierPods(tier)).filter(ready);
          return ps.length === 1 && ps[0]!.metadata.uid !== victim.metadata.uid;
        },
        120_000,
      );
      const back = await waitUntil(
        "server answers again",
        async () => {
          const d = (await tierPods("device")).find(ready);
          if (!d) return undefined;
          const a = await infer(d.status.podIP!, probe);
          return !a.degraded && a.tier === "server" ? a : undefined;
        },
        120_000,
        250,
      );
      expect(back.stage).toBe("server");
      await waitUntil("Ready=True", modelReady, 120_000);
      const sawFalse = await watch.stop();
      console.info(
        `e2e: ${tier} Pod killed: server answers again after ${((performance.now() - killedAt) / 1000).toFixed(1)} s; ${meanwhile.filter((a) => a.degraded).length} degraded answer(s) meanwhile (${[...new Set(meanwhile.filter((a) => a.degraded).map((a) => a.reason))].join(", ")}); ${conditionType} went False: ${sawFalse}`,
      );
      expect(sawFalse).toBe(true);
    }
  });

  it("a three-stage bundle runs its edge stage on the edge node: device, edge and server answer as ddnn eval", async () => {
    const tier3 = packBundle("fashion-3tier");
    await createBundleConfigMap(cluster, "fashion-3tier");
    await cluster.kubectlOk(["apply", "-f", "-"], {
      input: modelYaml("fashion-3tier", tier3.digest, undefined, {
        device: "device",
        edge: "edge",
        server: "server",
      }),
    });
    const m = await waitUntil(
      "fashion-3tier Ready with its edge",
      async () => {
        const r = await modelReady();
        return r?.status?.bundleDigest === tier3.digest &&
          condition(r, "EdgeReady")?.reason !== "NotPlaced"
          ? r
          : undefined;
      },
      240_000,
    );
    expect(condition(m, "EdgeReady")?.status).toBe("True");
    const edge = (await tierPods("edge")).filter(ready);
    expect(edge).toHaveLength(1);
    expect(edge[0]!.status.containerStatuses?.[0]?.image).toBe(IMAGE);
    // The default node selection: the edge on a node labelled for the edge (node 2 of two, the
    // only node of one, which then serves all three tiers).
    const edgeNode = cluster.nodes.find((n) => n.name === edge[0]!.spec.nodeName);
    expect(edgeNode?.labels[TIER_LABELS.edge]).toBe("true");
    const n = 200;
    const device = await waitUntil("the new device Pod", async () => {
      const d = (await tierPods("device")).filter(ready);
      const ds = await getJson<{ status: { updatedNumberScheduled?: number } }>([
        "daemonset",
        `${MODEL}-device`,
        "-n",
        NS,
      ]);
      return d.length === 1 && ds.status.updatedNumberScheduled === 1 ? d[0] : undefined;
    });
    const c = compare(await inferAll(device.status.podIP!, n), await evaluate("fashion-3tier", n));
    console.info(
      `e2e: fashion-3tier with the edge on ${edge[0]!.spec.nodeName}: ${JSON.stringify(c)}`,
    );
    expect(c.degraded).toBe(0);
    expect(c.deviceDecisionMismatch).toBe(0);
    expect(c.localMismatch).toBe(0);
    expect(c.byEdge).toBeGreaterThan(0);
    expect(c.byServer).toBeGreaterThan(0);
    // The edge decides on the f32 features the device sent (spec.wire): ddnn eval's exits and labels.
    expect(c.stageMismatch).toBe(0);
    expect(c.remoteMismatch).toBe(0);
  });

  it("device agents on both nodes: each agent gets its own node's identity with its Pod's token, and no other node's", async () => {
    // Both nodes serve the device tier for this test (the model's broker is secure by default).
    const second = cluster.nodes.find((n) => n.labels[TIER_LABELS.device] !== "true")!;
    await cluster.kubectlOk(["label", "node", second.name, `${TIER_LABELS.device}=true`]);
    const labelled = Date.now();
    try {
      const agents = await waitUntil(
        "a Ready device agent with its identity on each node",
        async () => {
          const m = await modelReady();
          const d = (await tierPods("device")).filter(ready);
          const withIdentity = d.filter((p) =>
            (p as unknown as { spec: { volumes?: { name: string }[] } }).spec.volumes?.some(
              (v) => v.name === "identity-token",
            ),
          );
          return m && withIdentity.length === 2 && d.length === 2 ? withIdentity : undefined;
        },
        300_000,
      );
      expect(new Set(agents.map((p) => p.spec.nodeName))).toEqual(
        new Set(cluster.nodes.map((n) => n.name)),
      );
      // The new node's identity reaches the broker when the kubelet has updated its mounted
      // password file and the broker reloaded it; the agent retries its login until then.
      await waitUntil(
        "each agent connected to the broker with its identity",
        async () => {
          const up = await Promise.all(
            agents.map(async (p) => {
              const text = await fetch(`http://${p.status.podIP}:8080/metrics`).then(
                (r) => r.text(),
                () => "",
              );
              return /^ddnn_broker_connected(\{[^}]*\})? 1$/m.test(text);
            }),
          );
          return up.every(Boolean) ? true : undefined;
        },
        180_000,
      );
      console.info(
        `e2e: the second node's agent logged in ${((Date.now() - labelled) / 1000).toFixed(1)} s after its node was labelled`,
      );
      // Each agent connected to the authenticated broker with its identity: its offloads are
      // answered by the later tiers, nothing degraded.
      for (const p of agents) {
        const answers = await inferAll(p.status.podIP!, 40);
        expect(answers.filter((a) => a.degraded)).toEqual([]);
        expect(answers.some((a) => a.tier !== "device")).toBe(true);
      }
      const logs = await cluster.kubectlOk([
        "logs",
        "-n",
        OPERATOR_NS,
        "-l",
        `app.kubernetes.io/instance=${RELEASE}`,
        "--tail=-1",
        "--prefix",
      ]);
      for (const p of agents)
        expect(logs).toContain(`issued broker identity ${NS}/${MODEL}/device/${p.spec.nodeName}`);
      // The token the kubelet gave the agent on one node names that node; the operator answers
      // it with that node's identity, and the broker refuses that password for the other node.
      const [a, b] = agents as [Pod, Pod];
      const token = (
        await cluster.kubectlOk([
          "exec",
          "-n",
          NS,
          a.metadata.name,
          "--",
          "cat",
          "/var/run/secrets/ddnn/token",
        ])
      ).trim();
      const review = JSON.parse(
        await cluster.kubectlOk(["create", "-o", "json", "-f", "-"], {
          input: JSON.stringify({
            apiVersion: "authentication.k8s.io/v1",
            kind: "TokenReview",
            spec: { token, audiences: ["ddnn-broker"] },
          }),
        }),
      ) as { status: { user?: { extra?: Record<string, string[]> } } };
      expect(review.status.user?.extra?.["authentication.kubernetes.io/node-name"]).toEqual([
        a.spec.nodeName,
      ]);
      const tls = await getJson<{ data: Record<string, string> }>([
        "secret",
        `${RELEASE}-identity-tls`,
        "-n",
        OPERATOR_NS,
      ]);
      const operatorPod = (await pods(OPERATOR_NS, `app.kubernetes.io/instance=${RELEASE}`)).find(
        ready,
      )!;
      const grant = await requestDeviceIdentity(
        new URL(IDENTITY_PATH, `https://${operatorPod.status.podIP}:8444`),
        token,
        MODEL,
        {
          ca: Buffer.from(tls.data["ca.crt"]!, "base64"),
          servername: `${RELEASE}-identity.${OPERATOR_NS}.svc`,
        },
      );
      expect(grant.username).toBe(`${NS}/${MODEL}/device/${a.spec.nodeName}`);
      const broker = (await tierPods("broker")).find(ready)!;
      const tlsOptions = await brokerTls();
      const connect = (username: string) =>
        brokerConnect(broker, { ...tlsOptions, username, password: grant.password });
      expect(await connect(grant.username)).toBe("connected");
      expect(await connect(`${NS}/${MODEL}/device/${b.spec.nodeName}`)).toMatch(
        /Not authorized|Bad User Name or Password/,
      );
      console.info(
        `e2e: device identities by Pod token: ${agents.map((p) => p.spec.nodeName).join(", ")}; ${a.spec.nodeName}'s token gets ${grant.username} and no other`,
      );
    } finally {
      await cluster.kubectlOk(["label", "node", second.name, `${TIER_LABELS.device}-`]);
    }
  });

  it("a multi-view model places each view on its node; every capture gets the in-process multi-view answer on every view's device", async () => {
    const VIEWS = "views";
    const [first, second] = cluster.nodes;
    const onNode = (n: (typeof cluster.nodes)[number] | undefined) => ({
      "kubernetes.io/hostname": (n ?? first!).name,
    });
    // Views 0 and 2 on the first node, view 1 on the second (the first alone with one node); each
    // view's agent on its own port, since a node holds several.
    const placement = [onNode(first), onNode(second), onNode(first)];
    await createBundleConfigMap(cluster, "fashion-views3");
    const digest = packBundle("fashion-views3").digest;
    await cluster.kubectlOk(["apply", "-f", "-"], {
      input: JSON.stringify({
        apiVersion: "fog.ddnn.io/v1alpha1",
        kind: "DDNNModel",
        metadata: { name: VIEWS, namespace: NS },
        spec: {
          bundle: { configMap: { name: "fashion-views3", key: "bundle.tar.gz" }, sha256: digest },
          placement: { device: "device", server: "server" },
          wire: { dtype: "f32" },
          deadlineMs: 5000,
          tiers: {
            device: {
              nodeSelector: { "kubernetes.io/os": "linux" },
              views: placement.map((nodeSelector, view) => ({
                view,
                nodeSelector,
                source: { http: { port: 8181 + view } },
              })),
            },
            edge: { fusionWindowMs: 1000 },
            server: { replicas: 1 },
          },
          broker: { managed: { kind: "mosquitto" } },
        },
      }),
    });
    const viewPods = (v: number) =>
      pods(
        NS,
        `app.kubernetes.io/instance=${VIEWS},app.kubernetes.io/component=device,fog.ddnn.io/view=${v}`,
      );
    const agents = await waitUntil(
      "the views model Ready with one agent per view",
      async () => {
        const m = await getJson<Model>(["ddnnmodel", VIEWS, "-n", NS]);
        if (condition(m, "Ready")?.status !== "True") return undefined;
        const found = await Promise.all(
          [0, 1, 2].map(async (v) => (await viewPods(v)).filter(ready)),
        );
        return found.every((f) => f.length === 1) ? found.map((f) => f[0]!) : undefined;
      },
      300_000,
    );
    agents.forEach((p, v) => {
      expect(p.spec.nodeName).toBe(placement[v]!["kubernetes.io/hostname"]);
    });
    const sample = (v: number) =>
      readIdx(
        join(
          REPO_ROOT,
          "models",
          "fashion-views3",
          "eval",
          `fashion-mnist-views3-t10k-2000-view${v}-images-idx3-ubyte.gz`,
        ),
      );
    const views = await Promise.all([0, 1, 2].map(sample));
    const n = 60;
    const expected = await evaluate("fashion-views3", n);
    const answers: InferAnswer[][] = [];
    for (let i = 0; i < n; i++) {
      answers.push(
        await Promise.all(
          agents.map(async (p, v) => {
            const res = await fetch(`http://${p.status.podIP}:${8181 + v}/v1/infer?capture=c${i}`, {
              method: "POST",
              headers: { "Content-Type": "application/octet-stream" },
              body: views[v]!.data.subarray(i * 784, (i + 1) * 784),
              signal: AbortSignal.timeout(30_000),
            });
            if (!res.ok)
              throw new Error(`view ${v} /v1/infer answered ${res.status}: ${await res.text()}`);
            return (await res.json()) as InferAnswer;
          }),
        ),
      );
    }
    const mismatched = answers.filter((a, i) =>
      a.some((x) => x.stage !== expected[i]!.stage || x.label !== expected[i]!.label),
    ).length;
    const degraded = answers.flat().filter((a) => a.degraded).length;
    const byServer = answers.filter((a) => a[0]!.tier === "server").length;
    console.info(
      `e2e: views on ${agents.map((p) => p.spec.nodeName).join(", ")}: ${n} captures, ${mismatched} differ from the in-process pipeline, ${degraded} degraded, ${byServer} finished by the server`,
    );
    expect(degraded).toBe(0);
    expect(mismatched).toBe(0);
    expect(byServer).toBeGreaterThan(0);
    await cluster.kubectlOk([
      "delete",
      "ddnnmodel",
      VIEWS,
      "-n",
      NS,
      "--wait=true",
      "--timeout=120s",
    ]);
    await cluster.kubectlOk(["delete", "configmap", "fashion-views3", "-n", NS]);
  });

  it("a server Pod killed under load while another replica runs: the other takes over; every request is answered once, inside its deadline", async () => {
    await cluster.kubectlOk([
      "patch",
      "ddnnmodel",
      MODEL,
      "-n",
      NS,
      "--type=merge",
      "-p",
      JSON.stringify({ spec: { tiers: { server: { replicas: 2 } } } }),
    ]);
    const servers = await waitUntil(
      "two Ready server Pods",
      async () => {
        const ps = (await tierPods("server")).filter(ready);
        return ps.length === 2 && (await modelReady()) ? ps : undefined;
      },
      180_000,
    );
    const device = (await tierPods("device")).find(ready)!;
    const deadlineMs = ((await model()) as unknown as { spec: { deadlineMs: number } }).spec
      .deadlineMs;
    // Six requests in flight for 12 s; one server Pod is killed 2 s in.
    const started = performance.now();
    const killAt = started + 2000;
    let killedAt = 0;
    const answers: { at: number; ms: number; a: InferAnswer }[] = [];
    let i = 0;
    const killer = (async () => {
      await sleep(killAt - performance.now());
      killedAt = performance.now();
      await cluster.kubectlOk([
        "delete",
        "pod",
        servers[0]!.metadata.name,
        "-n",
        NS,
        "--grace-period=0",
        "--force",
      ]);
    })();
    await Promise.all(
      Array.from({ length: 6 }, async () => {
        while (performance.now() - started < 12_000) {
          const n = i++ % SAMPLES;
          const at = performance.now();
          const a = await infer(device.status.podIP!, n, deadlineMs + 10_000);
          answers.push({ at, ms: performance.now() - at, a });
        }
      }),
    );
    await killer;
    const offloaded = answers.filter((x) => x.a.tier !== "device" || x.a.degraded);
    const degraded = answers.filter((x) => x.a.degraded);
    // After the kill the other replica answers (the killed one's replacement takes longer).
    const later = answers.filter(
      (x) => x.at > killedAt + 2000 && (x.a.tier !== "device" || x.a.degraded),
    );
    const slowest = Math.max(...degraded.map((x) => x.ms), 0);
    console.info(
      `e2e: server Pod killed under load with a second replica: ${answers.length} answers, ${offloaded.length} offloaded, ${degraded.length} degraded (${[...new Set(degraded.map((x) => x.a.reason))].join(", ") || "none"}; slowest ${slowest.toFixed(0)} ms, deadline ${deadlineMs} ms), ${later.filter((x) => !x.a.degraded).length} of ${later.length} upstream answers from 2 s after the kill not degraded`,
    );
    expect(answers.length).toBe(i);
    expect(offloaded.length).toBeGreaterThan(20);
    // In flight on the killed Pod: answered locally at the deadline, never later, never twice.
    expect(slowest).toBeLessThan(deadlineMs + 1500);
    expect(degraded.length).toBeLessThan(offloaded.length / 4);
    expect(later.length).toBeGreaterThan(5);
    expect(later.filter((x) => x.a.degraded)).toEqual([]);
    await cluster.kubectlOk([
      "patch",
      "ddnnmodel",
      MODEL,
      "-n",
      NS,
      "--type=merge",
      "-p",
      JSON.stringify({ spec: { tiers: { server: { replicas: 1 } } } }),
    ]);
  });

  it("kubectl delete of the model removes every object it owns; helm uninstall leaves no operator object", async () => {
    await cluster.kubectlOk(["delete", "ddnnmodel", MODEL, "-n", NS, "--wait=true"], {
      timeoutMs: 180_000,
    });
    await waitUntil(
      "the model's objects to go",
      async () => {
        const left = await getJson<{ items: { kind: string; metadata: { name: string } }[] }>([
          "deployments,daemonsets,services,configmaps,pods",
          "-n",
          NS,
          "-l",
          "app.kubernetes.io/managed-by=ddnn-operator",
        ]);
        return left.items.length === 0;
      },
      180_000,
    );
    // The rules the chart gave the operator, to compare with the requests it made.
    const granted = await grantedRules();
    const uninstallAt = Date.now();
    const r = await helm(["uninstall", RELEASE, "-n", OPERATOR_NS, "--wait", "--timeout", "180s"]);
    expect(r.code, r.stderr).toBe(0);
    await waitUntil(
      "the operator's objects to go",
      async () => {
        const ns = await getJson<{ items: unknown[] }>([
          "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets",
          "-n",
          OPERATOR_NS,
          "-l",
          `app.kubernetes.io/instance=${RELEASE}`,
        ]);
        const cluster_ = await getJson<{ items: unknown[] }>([
          "clusterroles,clusterrolebindings",
          "-l",
          `app.kubernetes.io/instance=${RELEASE}`,
        ]);
        return ns.items.length === 0 && cluster_.items.length === 0;
      },
      180_000,
    );
    // The CRD stays (helm never deletes CRDs); delete it as docs/helm.md says.
    await cluster.kubectlOk(["delete", "crd", "ddnnmodels.fog.ddnn.io"]);
    const leases = await getJson<{ items: { metadata: { name: string } }[] }>([
      "leases",
      "-n",
      OPERATOR_NS,
    ]);
    // The chart makes the Lease, so the uninstall removes it too.
    expect(leases.items.map((l) => l.metadata.name)).toEqual([]);

    // Until the uninstall the chart's RBAC let the operator do everything it asked for: the API
    // server's audit log of the operator's ServiceAccount has no 403. (During helm uninstall the
    // Role goes while the leader still runs, so its Lease release on SIGTERM may be refused.)
    const user = `system:serviceaccount:${OPERATOR_NS}:${RELEASE}`;
    const events = readFileSync(cluster.logFile("audit"), "utf8")
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map(
        (l) =>
          JSON.parse(l) as {
            verb: string;
            stageTimestamp: string;
            requestReceivedTimestamp?: string;
            user: { username: string };
            objectRef?: { resource?: string; subresource?: string };
            responseStatus?: { code?: number };
          },
      )
      // This run's only: a kept cluster's log holds earlier runs too.
      .filter((e) => e.user.username === user && Date.parse(e.stageTimestamp) >= suiteStart);
    const name = (e: (typeof events)[number]) =>
      `${e.verb} ${e.objectRef?.resource ?? "?"}${e.objectRef?.subresource ? `/${e.objectRef.subresource}` : ""}`;
    const refused = events.filter((e) => e.responseStatus?.code === 403);
    const before = refused.filter((e) => Date.parse(e.stageTimestamp) < uninstallAt);
    console.info(
      `e2e: the operator's ${events.length} API requests: ${[...new Set(events.map(name))].sort().join(", ")}; refused during helm uninstall: ${
        refused
          .filter((e) => !before.includes(e))
          .map(name)
          .join(", ") || "none"
      }`,
    );
    expect(events.length).toBeGreaterThan(20);
    expect(before.map(name)).toEqual([]);

    // Least privilege, from the other side: every rule the chart grants was used by this run, or
    // is one the run cannot show. Server-side apply is audited as "patch" even when it creates
    // (RBAC asks for create then too); the run never prunes an object (a smaller plan) nor loses
    // its Lease; and finalizers update is asked of the owner-reference admission plugin, not sent.
    // A watch is logged when it ends (at the uninstall): count requests by when they began.
    const made = new Set(
      events
        .filter((e) => Date.parse(e.requestReceivedTimestamp ?? e.stageTimestamp) < uninstallAt)
        .map(
          (e) =>
            `${e.objectRef?.resource}${e.objectRef?.subresource ? `/${e.objectRef.subresource}` : ""} ${e.verb}`,
        ),
    );
    const unused = granted.filter((g) => !made.has(g)).sort();
    console.info(`e2e: granted but not requested in this run: ${unused.join(", ")}`);
    expect(unused).toEqual(
      [
        ...["configmaps", "daemonsets", "deployments", "services"].flatMap((r) => [
          `${r} create`,
          `${r} delete`,
        ]),
        "ddnnmodels/finalizers update",
        "leases create",
        // Secrets are written (server-side apply: patch) for every model with a secure broker;
        // none is pruned, and apply is audited as patch.
        "secrets create",
        "secrets delete",
      ].sort(),
    );
  });

  /** The chart's rules for the operator's ServiceAccount, as "resource[/sub] verb" strings. */
  async function grantedRules(): Promise<string[]> {
    const out = new Set<string>();
    const roles = [
      ...(
        await getJson<{ items: { rules: { resources: string[]; verbs: string[] }[] }[] }>([
          "clusterroles",
          "-l",
          `app.kubernetes.io/instance=${RELEASE}`,
        ])
      ).items,
      ...(
        await getJson<{ items: { rules: { resources: string[]; verbs: string[] }[] }[] }>([
          "roles",
          "-n",
          OPERATOR_NS,
          "-l",
          `app.kubernetes.io/instance=${RELEASE}`,
        ])
      ).items,
    ];
    for (const role of roles)
      for (const rule of role.rules)
        for (const r of rule.resources) for (const v of rule.verbs) out.add(`${r} ${v}`);
    return [...out];
  }

  /**
   * `ddnn bundle pack` of a shipped bundle into a ConfigMap manifest, applied server-side as its
   * help says; the sha256 it prints must be the digest of the bundle's ddnn.json.
   */
  async function createBundleConfigMap(c: Cluster, bundle: string): Promise<void> {
    const { file, digest } = packBundle(bundle);
    const stderr = await ddnn(
      [
        "bundle",
        "pack",
        join(REPO_ROOT, "models", bundle),
        "--name",
        bundle,
        "--namespace",
        NS,
        "--out",
        file,
      ],
      60_000,
    );
    expect(/^spec\.bundle\.sha256: ([0-9a-f]{64})$/m.exec(stderr)?.[1]).toBe(digest);
    await c.kubectlOk(["apply", "--server-side", "-f", file]);
  }

  async function serverExits(p: Pod): Promise<number> {
    const text = await (await fetch(`http://${p.status.podIP}:8080/metrics`)).text();
    let sum = 0;
    for (const m of text.matchAll(/^ddnn_exits_total\{([^}]*)\}\s+(\S+)/gm))
      if (/stage="server"/.test(m[1]!)) sum += Number(m[2]);
    return sum;
  }
});

/** The DDNNModel: a shipped two-stage bundle from its ConfigMap, a managed broker. */
function modelYaml(
  bundle: string,
  digest: string,
  exits?: Record<string, number>,
  placement: Record<string, string> = { device: "device", server: "server" },
): string {
  return JSON.stringify({
    apiVersion: "fog.ddnn.io/v1alpha1",
    kind: "DDNNModel",
    metadata: { name: MODEL, namespace: NS },
    spec: {
      bundle: { configMap: { name: bundle, key: "bundle.tar.gz" }, sha256: digest },
      placement,
      ...(exits ? { exits } : {}),
      // Features as f32: every tier computes what ddnn eval computes, so answers can be compared
      // exactly (the default u8q may move a decision at a boundary).
      wire: { dtype: "f32" },
      // Correctness first: a loaded CI machine must not turn answers into degraded ones.
      deadlineMs: 3000,
      tiers: {
        device: { source: { http: { port: 8080 } } },
        server: { replicas: 1 },
      },
      broker: { managed: { kind: "mosquitto" } },
    },
  });
}
