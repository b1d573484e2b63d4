/**
 * The operator against a real kube-apiserver (and kube-controller-manager's garbage collector):
 * the example makes every owned object, status reaches Ready, spec changes roll out, obsolete
 * objects go, a no-op reconcile makes no request, a bad bundle rolls nothing out, deletion
 * removes everything, and the operator needs nothing beyond operator/rbac.yaml.
 */
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { APPLIED_HASH_ANNOTATION, proxyEnvForPods } from "../../operator/builders.js";
import type { KubeClient, KubeObject } from "../../operator/kube.js";
import { Operator, type ReconcileReport } from "../../operator/operator.js";
import type { Condition, DDNNModelStatus } from "../../operator/spec.js";
import { type ControlPlane, OPERATOR_USER, REPO_ROOT } from "../cluster/control-plane.js";
import { testBrokerCa } from "../support/broker-ca.js";
import { packBundle, smallStages, writeBundle } from "../support/bundle-fixture.js";
import {
  adminClient,
  BundleServer,
  chartOperatorOptions,
  DEMO_DIGEST_URL,
  demoBundleBytes,
  getOrUndefined,
  markDaemonSetReady,
  markDeploymentReady,
  operatorRequests,
  sleep,
  startCluster,
  waitFor,
} from "./harness.js";

const NS = "fog";
const EXAMPLE = join(REPO_ROOT, "examples", "ddnnmodel.yaml");
const exampleDigest = (
  parse(readFileSync(EXAMPLE, "utf8").split(/^---$/m)[1]!) as {
    spec: { bundle: { sha256: string } };
  }
).spec.bundle.sha256;

type Container = {
  name: string;
  image: string;
  args: string[];
  env: { name: string; value?: string; valueFrom?: Record<string, Record<string, string>> }[];
  ports: { containerPort: number; hostPort?: number }[];
};
type Workload = KubeObject & {
  metadata: KubeObject["metadata"] & { generation: number; resourceVersion: string };
  spec: {
    replicas?: number;
    template: {
      spec: {
        containers: Container[];
        volumes?: Record<string, unknown>[];
        nodeSelector?: Record<string, string>;
        tolerations?: unknown[];
      };
    };
  };
};
type Model = KubeObject & {
  metadata: KubeObject["metadata"] & { generation: number };
  status?: DDNNModelStatus;
};

function env(w: Workload): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of w.spec.template.spec.containers[0]!.env)
    out[e.name] = e.value ?? `ref:${JSON.stringify(e.valueFrom)}`;
  return out;
}

function cond(m: Model | undefined, type: string): Condition | undefined {
  return m?.status?.conditions?.find((c) => c.type === type);
}

let cp: ControlPlane;
let admin: KubeClient;
let operator: Operator;
const bundles = new BundleServer();
const reports: ReconcileReport[] = [];
const logs: string[] = [];
const savedProxy = process.env.HTTP_PROXY;

/** A getter for one kind of object in the test namespace (undefined when absent). */
const getter =
  <T>(apiVersion: string, plural: string) =>
  (name: string) =>
    getOrUndefined<T>(admin, { apiVersion, plural, namespace: NS, name });
const deployment = getter<Workload>("apps/v1", "deployments");
const daemonSet = getter<Workload>("apps/v1", "daemonsets");
const model = getter<Model>("fog.ddnn.io/v1alpha1", "ddnnmodels");

async function markAllReady(name: string, devices = 2): Promise<void> {
  for (const c of ["broker", "server", "edge"]) {
    if (await deployment(`${name}-${c}`)) await markDeploymentReady(admin, NS, `${name}-${c}`);
  }
  if (await daemonSet(`${name}-device`))
    await markDaemonSetReady(admin, NS, `${name}-device`, devices);
}

async function settle(): Promise<void> {
  // Let watch events of our own writes arrive and their (no-op) reconciles finish.
  await operator.whenIdle();
  await sleep(400);
  await operator.whenIdle();
}

/**
 * Resyncs every model and returns the reconciles of `key` that followed, and every request the
 * API server's audit log saw from the operator meanwhile ("VERB URI").
 */
async function resync(key: string): Promise<{ noop: ReconcileReport[]; seen: string[] }> {
  await settle();
  const auditBefore = cp.auditEvents().length;
  const reportsBefore = reports.length;
  operator.resync();
  await waitFor(`a resync reconcile of ${key}`, () =>
    reports.slice(reportsBefore).some((r) => r.key === key),
  );
  await settle();
  await sleep(500);
  return {
    noop: reports.slice(reportsBefore).filter((r) => r.key === key),
    seen: operatorRequests(cp, auditBefore).map((e) => `${e.verb} ${e.requestURI}`),
  };
}

beforeAll(async () => {
  cp = await startCluster({ controllers: ["garbagecollector"] });
  admin = adminClient(cp);
  const proxy = await bundles.start();
  bundles.files.set(DEMO_DIGEST_URL, demoBundleBytes());
  process.env.HTTP_PROXY = proxy;
  operator = new Operator({
    kubeConfig: cp.kubeConfig("operator"),
    identity: "reconcile-test",
    images: { image: "ddnn-fog:test", brokerImage: "eclipse-mosquitto:2" },
    // As `ddnn operator` does: the Pods get the proxy the operator verifies bundles through.
    proxy: proxyEnvForPods(process.env).proxy,
    leaderElection: false,
    httpPort: 0,
    httpHost: "127.0.0.1",
    resyncMs: 3_600_000,
    retryBundleMs: 1_000,
    ...chartOperatorOptions(),
    log: { info: (m) => logs.push(m), warn: (m) => logs.push(`warn ${m}`) },
  });
  operator.on("reconciled", (r: ReconcileReport) => reports.push(r));
  await operator.start();
}, 180_000);

afterAll(async () => {
  await operator?.stop();
  await bundles.stop();
  if (savedProxy === undefined) delete process.env.HTTP_PROXY;
  else process.env.HTTP_PROXY = savedProxy;
  await cp?.stop();
});

describe("DDNNModel reconcile against a real kube-apiserver", () => {
  it("kubectl apply -f examples/ddnnmodel.yaml creates every owned object, and Ready follows the workloads", async () => {
    const out = await cp.kubectlOk(["apply", "-f", EXAMPLE]);
    expect(out).toContain("ddnnmodel.fog.ddnn.io/demo created");

    const server = await waitFor("the server Deployment", () => deployment("demo-server"));
    const edge = await waitFor("the edge Deployment", () => deployment("demo-edge"));
    const device = await waitFor("the device DaemonSet", () => daemonSet("demo-device"));
    const broker = await waitFor("the broker Deployment", () => deployment("demo-broker"));
    const get = (plural: string, name: string) =>
      getOrUndefined<KubeObject & Record<string, unknown>>(admin, {
        apiVersion: "v1",
        plural,
        namespace: NS,
        name,
      });
    const serverSvc = await waitFor("the server Service", () => get("services", "demo-server"));
    const brokerSvc = await waitFor("the broker Service", () => get("services", "demo-broker"));
    const brokerConf = await waitFor("the broker ConfigMap", () =>
      get("configmaps", "demo-broker"),
    );
    const m = (await model("demo"))!;

    for (const o of [server, edge, device, broker, serverSvc, brokerSvc, brokerConf]) {
      expect(o.metadata?.ownerReferences).toEqual([
        expect.objectContaining({
          kind: "DDNNModel",
          name: "demo",
          uid: m.metadata?.uid,
          controller: true,
        }),
      ]);
      const managers = (
        (o.metadata?.managedFields ?? []) as { manager: string; operation: string }[]
      ).map((f) => `${f.manager}/${f.operation}`);
      expect(managers).toContain("ddnn-operator/Apply");
      expect(o.metadata?.annotations?.[APPLIED_HASH_ANNOTATION]).toMatch(/^[0-9a-f]{64}$/);
    }

    const common = {
      DDNN_MODEL: "fog/demo",
      DDNN_BUNDLE: DEMO_DIGEST_URL,
      DDNN_BUNDLE_DIGEST: exampleDigest,
      DDNN_BUNDLE_CACHE: "/var/cache/ddnn/bundles",
      // The example's managed broker is secure by default: TLS from the issued certificate.
      DDNN_BROKER_URL: "mqtts://demo-broker.fog.svc:8883",
      DDNN_BROKER_CA: "/etc/ddnn/broker-ca/ca.crt",
      DDNN_HTTP_PORT: "8080",
      HTTP_PROXY: process.env.HTTP_PROXY,
    };
    // Each worker tier its own identity, by reference to the credentials Secret.
    const identity = (tier: string) => ({
      DDNN_BROKER_USERNAME: `ref:${JSON.stringify({ secretKeyRef: { name: "demo-broker-credentials", key: `${tier}.username` } })}`,
      DDNN_BROKER_PASSWORD: `ref:${JSON.stringify({ secretKeyRef: { name: "demo-broker-credentials", key: `${tier}.password` } })}`,
    });
    expect(server.spec.replicas).toBe(2);
    expect(server.spec.template.spec.containers[0]).toMatchObject({
      image: "ddnn-fog:test",
      args: ["server"],
    });
    expect(env(server)).toEqual({
      ...common,
      ...identity("server"),
      DDNN_STAGES: "server",
      DDNN_MAX_BATCH: "32",
      DDNN_MAX_DELAY_MS: "2",
    });
    expect(server.spec.template.spec.containers[0]).toMatchObject({
      resources: { requests: { cpu: "250m", memory: "256Mi" }, limits: { memory: "512Mi" } },
    });
    expect(edge.spec.replicas).toBe(1);
    expect(edge.spec.template.spec.containers[0]!.args).toEqual(["gateway"]);
    expect(env(edge)).toEqual({
      ...common,
      ...identity("edge"),
      DDNN_STAGES: "edge",
      DDNN_THRESHOLDS: "edge=0.3",
    });
    expect(edge.spec.template.spec.nodeSelector).toEqual({ "fog.ddnn.io/tier": "edge" });
    expect(device.spec.template.spec.containers[0]!.args).toEqual(["agent"]);
    expect(env(device)).toMatchObject({
      ...common,
      // Only the device agent waits for upstream answers: only it reads the deadline.
      DDNN_DEADLINE_MS: "250",
      DDNN_STAGES: "device",
      DDNN_THRESHOLDS: "device=0.4",
      DDNN_SOURCE: "http",
      DDNN_DEVICE_ID: expect.stringContaining("spec.nodeName"),
      // The device proves its node to the operator for its identity (docs/security.md).
      DDNN_IDENTITY_URL: "https://ddnn-fog-identity.ddnn-system.svc:8444",
    });
    expect(env(device)).not.toHaveProperty("DDNN_BROKER_PASSWORD");
    expect(device.spec.template.spec.nodeSelector).toEqual({ "fog.ddnn.io/tier": "device" });
    expect(device.spec.template.spec.tolerations).toEqual([
      { key: "fog.ddnn.io/device", operator: "Exists", effect: "NoSchedule" },
    ]);
    expect(device.spec.template.spec.containers[0]!.ports[0]).toMatchObject({
      containerPort: 8080,
      hostPort: 8080,
    });
    expect((brokerConf.data as Record<string, string>)["mosquitto.conf"]).toContain(
      "set_tcp_nodelay true",
    );
    expect(broker.spec.template.spec.containers[0]!.image).toBe("eclipse-mosquitto:2");
    expect((serverSvc.spec as { ports: { port: number }[] }).ports[0]!.port).toBe(8080);
    expect((brokerSvc.spec as { ports: { port: number }[] }).ports[0]!.port).toBe(8883);
    // The certificate the operator issued names the broker's Service and chains to its CA.
    const cert = await waitFor("the issued certificate", () => get("secrets", "demo-broker-cert"));
    const issued = new X509Certificate(
      Buffer.from((cert.data as Record<string, string>)["tls.crt"]!, "base64"),
    );
    expect(issued.checkHost("demo-broker.fog.svc")).toBe("demo-broker.fog.svc");
    expect(issued.verify(new X509Certificate(testBrokerCa.certPem).publicKey)).toBe(true);

    // Verified, but no workload reports ready yet (no kubelets here).
    const pending = await waitFor("BundleVerified", async () => {
      const x = await model("demo");
      return cond(x, "BundleVerified")?.status === "True" && cond(x, "Ready") ? x : undefined;
    });
    expect(cond(pending, "Ready")).toMatchObject({ status: "False" });
    expect(pending.status?.observedGeneration).toBe(pending.metadata.generation);
    const readyFalseSince = cond(pending, "Ready")!.lastTransitionTime;

    await settle();
    await markAllReady("demo", 2);
    const ready = await waitFor("Ready=True", async () => {
      const x = await model("demo");
      return cond(x, "Ready")?.status === "True" ? x : undefined;
    });
    expect(ready.status).toMatchObject({
      observedGeneration: ready.metadata.generation,
      devices: { desired: 2, ready: 2, updated: 2 },
      devicesReady: "2/2",
      bundleDigest: exampleDigest,
      bundleDigestShort: exampleDigest.slice(0, 12),
      bundle: { name: "demo-3stage", version: "1.0.0" },
    });
    for (const t of ["BundleVerified", "BrokerReady", "ServerReady", "EdgeReady", "DevicesReady"])
      expect(cond(ready, t)).toMatchObject({
        status: "True",
        observedGeneration: ready.metadata.generation,
      });
    expect(cond(ready, "Ready")!.lastTransitionTime >= readyFalseSince).toBe(true);

    const table = await cp.kubectlOk(["get", "ddnn", "-n", NS]);
    expect(table).toMatch(/NAME\s+READY\s+DEVICES\s+BUNDLE\s+AGE/);
    expect(table).toMatch(new RegExp(`demo\\s+True\\s+2/2\\s+${exampleDigest.slice(0, 12)}`));
    const events = await cp.kubectlOk([
      "get",
      "events",
      "-n",
      NS,
      "--field-selector",
      "involvedObject.name=demo",
      "-o",
      "json",
    ]);
    const reasons = (JSON.parse(events).items as { reason: string }[]).map((e) => e.reason);
    expect(reasons).toEqual(expect.arrayContaining(["BundleVerified", "Applied", "Ready"]));
  });

  it("a second reconcile with nothing changed makes no request to the API server", async () => {
    await settle();
    const first = reports.find((r) => r.key === "fog/demo" && r.requests.length > 0)!;
    const { noop, seen } = await resync("fog/demo");
    expect(noop.every((r) => r.result === "success")).toBe(true);
    expect(noop.flatMap((r) => r.requests)).toEqual([]);
    // The API server's own record agrees: no request at all from the operator's identity.
    expect(seen).toEqual([]);
    const summary = (r: ReconcileReport) => {
      const n = new Map<string, number>();
      for (const q of r.requests) n.set(q.verb, (n.get(q.verb) ?? 0) + 1);
      return `${r.requests.length} (${[...n].map(([v, c]) => `${c} ${v}`).join(", ")})`;
    };
    process.stdout.write(
      `requests per reconcile: first ${summary(first)}, no-op ${noop.map(summary).join(" / ")}\n`,
    );
  });

  it("changing a threshold, a replica count or the bundle updates the owned objects and observedGeneration", async () => {
    const serverBefore = (await deployment("demo-server"))!;
    await cp.kubectlOk([
      "patch",
      "ddnn",
      "demo",
      "-n",
      NS,
      "--type=merge",
      "-p",
      '{"spec":{"exits":{"edge":0.25}}}',
    ]);
    await waitFor(
      "edge threshold 0.25",
      async () => env((await deployment("demo-edge"))!).DDNN_THRESHOLDS === "edge=0.25",
    );
    await settle();
    // Only the edge tier reads that threshold: the server Deployment was not written.
    expect((await deployment("demo-server"))!.metadata.resourceVersion).toBe(
      serverBefore.metadata.resourceVersion,
    );
    let m = (await model("demo"))!;
    expect(m.status?.observedGeneration).toBe(m.metadata.generation);

    await cp.kubectlOk([
      "patch",
      "ddnn",
      "demo",
      "-n",
      NS,
      "--type=merge",
      "-p",
      '{"spec":{"tiers":{"server":{"replicas":3}}}}',
    ]);
    await waitFor(
      "3 server replicas",
      async () => (await deployment("demo-server"))!.spec.replicas === 3,
    );
    await waitFor(
      "Ready=False while the new replica is missing",
      async () => cond(await model("demo"), "Ready")?.status === "False",
    );
    // The threshold change rolled the edge Deployment too: both report ready again.
    await markAllReady("demo", 2);
    await waitFor("Ready again", async () => cond(await model("demo"), "Ready")?.status === "True");

    // A new bundle version: every tier gets the new digest.
    const dir = writeBundle(
      [
        { ...smallStages()[0]!, name: "device" },
        {
          ...smallStages()[0]!,
          name: "edge",
          inputName: "features",
          inShape: [6],
          featuresName: "edge_features",
          seed: 8,
        },
        { ...smallStages()[1]!, name: "server", inputName: "edge_features" },
      ],
      { edit: (mf) => Object.assign(mf, { version: "2.0.0" }) },
    );
    const bytes = new Uint8Array(readFileSync(packBundle(dir.dir)));
    const digest2 = (await import("../../core/bundle/read.js")).readBundleArchive(bytes, "v2");
    const v2 = (await digest2).digest;
    bundles.files.set("http://models.fog.svc/demo-2.0.0.tar.gz", bytes);
    await cp.kubectlOk([
      "patch",
      "ddnn",
      "demo",
      "-n",
      NS,
      "--type=merge",
      "-p",
      JSON.stringify({
        spec: { bundle: { url: "http://models.fog.svc/demo-2.0.0.tar.gz", sha256: v2 } },
      }),
    ]);
    for (const name of ["demo-server", "demo-edge"])
      await waitFor(
        `${name} on bundle 2`,
        async () => env((await deployment(name))!).DDNN_BUNDLE_DIGEST === v2,
      );
    await waitFor(
      "device on bundle 2",
      async () => env((await daemonSet("demo-device"))!).DDNN_BUNDLE_DIGEST === v2,
    );
    m = await waitFor("status on bundle 2", async () => {
      const x = await model("demo");
      return x?.status?.bundleDigest === v2 && x.status.observedGeneration === x.metadata.generation
        ? x
        : undefined;
    });
    expect(m.status?.bundle).toEqual({ name: "fixture", version: "2.0.0" });
  });

  it("moving the edge stage to the server deletes the edge Deployment", async () => {
    await cp.kubectlOk([
      "patch",
      "ddnn",
      "demo",
      "-n",
      NS,
      "--type=merge",
      "-p",
      '{"spec":{"placement":{"edge":"server"}}}',
    ]);
    await waitFor(
      "the edge Deployment to go",
      async () => (await deployment("demo-edge")) === undefined,
    );
    const server = (await deployment("demo-server"))!;
    expect(env(server)).toMatchObject({ DDNN_STAGES: "edge,server", DDNN_THRESHOLDS: "edge=0.25" });
    await markAllReady("demo", 2);
    const m = await waitFor("EdgeReady NotPlaced", async () => {
      const x = await model("demo");
      return cond(x, "EdgeReady")?.reason === "NotPlaced" && cond(x, "Ready")?.status === "True"
        ? x
        : undefined;
    });
    expect(cond(m, "EdgeReady")!.status).toBe("True");
    const events = JSON.parse(
      await cp.kubectlOk([
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        "involvedObject.name=demo,reason=Deleted",
        "-o",
        "json",
      ]),
    );
    expect(events.items[0].message).toContain("Deployment demo-edge");
  });

  it("a bundle whose digest does not match is reported in status and nothing is rolled out", async () => {
    await settle();
    const before = await Promise.all(["demo-server", "demo-broker"].map((n) => deployment(n)));
    const dsBefore = (await daemonSet("demo-device"))!;
    const wrong = "0".repeat(64);
    await cp.kubectlOk([
      "patch",
      "ddnn",
      "demo",
      "-n",
      NS,
      "--type=merge",
      "-p",
      JSON.stringify({ spec: { bundle: { sha256: wrong } } }),
    ]);
    const m = await waitFor("BundleVerified=False", async () => {
      const x = await model("demo");
      return cond(x, "BundleVerified")?.status === "False" ? x : undefined;
    });
    expect(cond(m, "BundleVerified")).toMatchObject({ reason: "DigestMismatch" });
    expect(cond(m, "BundleVerified")!.message).toContain(`spec.bundle.sha256 is ${wrong}`);
    expect(cond(m, "Ready")).toMatchObject({ status: "False", reason: "BundleNotVerified" });
    expect(m.status?.observedGeneration).toBe(m.metadata.generation);
    // The running version is untouched.
    await settle();
    const after = await Promise.all(["demo-server", "demo-broker"].map((n) => deployment(n)));
    expect(after.map((d) => d!.metadata.resourceVersion)).toEqual(
      before.map((d) => d!.metadata.resourceVersion),
    );
    expect((await daemonSet("demo-device"))!.metadata.resourceVersion).toBe(
      dsBefore.metadata.resourceVersion,
    );
    expect(m.status?.bundleDigest).not.toBe(wrong);
    const warn = JSON.parse(
      await cp.kubectlOk([
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        "involvedObject.name=demo,reason=DigestMismatch",
        "-o",
        "json",
      ]),
    );
    expect(warn.items[0].type).toBe("Warning");

    // A new model with a wrong digest gets no workload at all.
    const bad = readFileSync(EXAMPLE, "utf8")
      .split(/^---$/m)[1]!
      .replace("name: demo", "name: wrong-digest")
      .replace(exampleDigest, "f".repeat(64));
    await cp.kubectlOk(["apply", "-f", "-"], { input: bad });
    await waitFor(
      "wrong-digest reported",
      async () => cond(await model("wrong-digest"), "BundleVerified")?.reason === "DigestMismatch",
    );
    await settle();
    const owned = await cp.kubectlOk([
      "get",
      "deployments,daemonsets,services,configmaps",
      "-n",
      NS,
      "-l",
      "fog.ddnn.io/model=wrong-digest",
      "-o",
      "name",
    ]);
    expect(owned.trim()).toBe("");
  });

  it("a spec the API server accepts but the operator cannot read: Ready=False InvalidSpec, a Warning, nothing rolled out", async () => {
    // The CRD checks URLs with CEL's RE2, where \s is ASCII whitespace only; the operator's own
    // parser also counts a no-break space (U+00A0, as pasted from a web page) as whitespace.
    const doc = parse(readFileSync(EXAMPLE, "utf8").split(/^---$/m)[1]!) as {
      metadata: { name: string };
      spec: { bundle: { url: string } };
    };
    doc.metadata.name = "bad-spec";
    doc.spec.bundle.url = `${DEMO_DIGEST_URL}\u00a0`;
    await cp.kubectlOk(["apply", "-f", "-"], { input: JSON.stringify(doc) });
    const m = await waitFor("Ready=False/InvalidSpec", async () => {
      const x = await model("bad-spec");
      return cond(x, "Ready")?.reason === "InvalidSpec" ? x : undefined;
    });
    const ready = cond(m, "Ready")!;
    expect(ready).toMatchObject({
      status: "False",
      observedGeneration: m.metadata.generation,
      message: "spec.bundle.url: bundle.url must be an http:// or https:// URL",
    });
    expect(m.status?.observedGeneration).toBe(m.metadata.generation);
    const warnings = async () =>
      (
        JSON.parse(
          await cp.kubectlOk([
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            "involvedObject.name=bad-spec,reason=InvalidSpec",
            "-o",
            "json",
          ]),
        ).items as { type: string; message: string }[]
      ).map((e) => `${e.type} ${e.message}`);
    expect(await warnings()).toEqual([`Warning ${ready.message}`]);
    const owned = () =>
      cp.kubectlOk([
        "get",
        "deployments,daemonsets,services,configmaps",
        "-n",
        NS,
        "-l",
        "fog.ddnn.io/model=bad-spec",
        "-o",
        "name",
      ]);
    expect((await owned()).trim()).toBe("");

    // Nothing changed: a second reconcile writes nothing, not even an Event.
    const { noop, seen } = await resync("fog/bad-spec");
    expect(noop.flatMap((r) => r.requests)).toEqual([]);
    expect(seen).toEqual([]);

    // Another unreadable value: the message and observedGeneration follow, the transition time stays.
    await cp.kubectlOk([
      "patch",
      "ddnn",
      "bad-spec",
      "-n",
      NS,
      "--type=merge",
      "-p",
      JSON.stringify({
        spec: {
          bundle: { url: DEMO_DIGEST_URL },
          broker: { managed: null, external: { url: "mqtt://broker\u00a0.example:1883" } },
        },
      }),
    ]);
    const m2 = await waitFor("the new InvalidSpec message", async () => {
      const x = await model("bad-spec");
      return cond(x, "Ready")?.message.startsWith("spec.broker.external.url") ? x : undefined;
    });
    expect(m2.metadata.generation).toBeGreaterThan(m.metadata.generation);
    expect(cond(m2, "Ready")).toMatchObject({
      status: "False",
      reason: "InvalidSpec",
      observedGeneration: m2.metadata.generation,
      lastTransitionTime: ready.lastTransitionTime,
    });
    expect(m2.status?.observedGeneration).toBe(m2.metadata.generation);
    await waitFor("a Warning for the new message", async () => (await warnings()).length === 2);

    // Readable again: the model rolls out like any other.
    await cp.kubectlOk([
      "patch",
      "ddnn",
      "bad-spec",
      "-n",
      NS,
      "--type=merge",
      "-p",
      JSON.stringify({ spec: { broker: { managed: { kind: "mosquitto" }, external: null } } }),
    ]);
    const m3 = await waitFor("BundleVerified after the fix", async () => {
      const x = await model("bad-spec");
      return cond(x, "BundleVerified")?.status === "True" ? x : undefined;
    });
    expect(cond(m3, "Ready")!.reason).not.toBe("InvalidSpec");
    await waitFor("the owned objects", async () => (await owned()).includes("deployment"));
    await cp.kubectlOk(["delete", "ddnn", "bad-spec", "-n", NS, "--wait=false"]);
  });

  it("a bundle from a ConfigMap with an external TLS broker: credentials only by Secret reference, its CA mounted", async () => {
    await cp.kubectlOk([
      "create",
      "configmap",
      "demo-bundle",
      "-n",
      NS,
      `--from-file=bundle.tar.gz=${join(REPO_ROOT, "examples", "demo-bundle.tar.gz")}`,
    ]);
    await cp.kubectlOk(["apply", "-f", join(REPO_ROOT, "examples", "ddnnmodel-configmap.yaml")]);
    const server = await waitFor("demo-cm server", () => deployment("demo-cm-server"));
    expect(env(server)).toMatchObject({
      DDNN_BUNDLE: "/var/lib/ddnn/bundle/bundle.tar.gz",
      DDNN_BROKER_URL: "mqtts://emqx.mqtt.svc:8883",
      DDNN_WORKERS: "2",
      DDNN_BROKER_USERNAME: `ref:${JSON.stringify({ secretKeyRef: { name: "broker-credentials", key: "username" } })}`,
      DDNN_BROKER_PASSWORD: `ref:${JSON.stringify({ secretKeyRef: { name: "broker-credentials", key: "password" } })}`,
      DDNN_BROKER_CA: "/etc/ddnn/broker-ca/ca.crt",
    });
    expect(server.spec!.template.spec!.volumes).toContainEqual({
      name: "broker-ca",
      configMap: {
        name: "broker-ca",
        items: [{ key: "ca.crt", path: "ca.crt" }],
        defaultMode: 420,
      },
    });
    const device = await waitFor("demo-cm device", () => daemonSet("demo-cm-device"));
    expect(env(device)).toMatchObject({
      DDNN_SOURCE: "mqtt",
      DDNN_THRESHOLDS: "device=0.5",
      DDNN_BROKER_CA: "/etc/ddnn/broker-ca/ca.crt",
    });
    expect(await deployment("demo-cm-broker")).toBeUndefined();
    const m = await waitFor("demo-cm verified", async () => {
      const x = await model("demo-cm");
      return cond(x, "BundleVerified")?.status === "True" ? x : undefined;
    });
    expect(cond(m, "BrokerReady")).toMatchObject({ status: "True", reason: "External" });
    // The API server defaults fields of the CA volume (defaultMode); a resync still changes nothing.
    const { noop, seen } = await resync("fog/demo-cm");
    expect(noop.flatMap((r) => r.requests)).toEqual([]);
    expect(seen).toEqual([]);
  });

  it("deleting the DDNNModel removes everything it owned (garbage collector)", async () => {
    await cp.kubectlOk(["delete", "ddnn", "demo", "-n", NS, "--wait=false"]);
    await waitFor(
      "owned objects of demo to go",
      async () =>
        (
          await cp.kubectlOk([
            "get",
            "deployments,daemonsets,services,configmaps",
            "-n",
            NS,
            "-l",
            "fog.ddnn.io/model=demo",
            "-o",
            "name",
          ])
        ).trim() === "",
      60_000,
      500,
    );
  });

  it("a managed broker with tls and auth: its password file, ACL and credentials as owned Secrets, referenced by the Pods; a second reconcile writes nothing", async () => {
    const manifest = parseAllDocuments(readFileSync(EXAMPLE, "utf8"))
      .map((d) => d.toJS() as KubeObject & { spec: Record<string, unknown> })
      .find((o) => o?.kind === "DDNNModel")!;
    manifest.metadata!.name = "secured";
    manifest.spec.placement = { device: "edge", edge: "edge", server: "server" };
    manifest.spec.broker = {
      managed: { tls: { secretName: "secured-tls" }, auth: { devices: ["cam-1"] } },
    };
    await admin.create(
      { apiVersion: "fog.ddnn.io/v1alpha1", plural: "ddnnmodels", namespace: NS },
      manifest,
    );
    const secret = getter<KubeObject & { data?: Record<string, string> }>("v1", "secrets");
    const auth = await waitFor("the broker's auth Secret", () => secret("secured-broker-auth"));
    const creds = await waitFor("the credentials Secret", () =>
      secret("secured-broker-credentials"),
    );
    const text = (s: typeof auth, k: string) => Buffer.from(s.data![k]!, "base64").toString();
    expect(text(auth, "passwd")).toMatch(/^fog\/secured\/server:\$7\$101\$/m);
    expect(text(auth, "acl")).toContain("user fog/secured/device/cam-1");
    expect(Object.keys(creds.data!).sort()).toEqual([
      "device.cam-1.password",
      "device.cam-1.username",
      "edge.password",
      "edge.username",
      "profile.password",
      "profile.username",
      "server.password",
      "server.username",
    ]);
    const server = await waitFor("the server Deployment", () => deployment("secured-server"));
    expect(env(server)).toMatchObject({
      DDNN_BROKER_URL: "mqtts://secured-broker.fog.svc:8883",
      DDNN_BROKER_CA: "/etc/ddnn/broker-ca/ca.crt",
      DDNN_BROKER_PASSWORD: `ref:${JSON.stringify({ secretKeyRef: { name: "secured-broker-credentials", key: "server.password" } })}`,
    });
    expect(env(server)).not.toHaveProperty("DDNN_INSECURE");
    await settle();
    const { noop, seen } = await resync("fog/secured");
    expect(noop.every((r) => r.result === "success")).toBe(true);
    expect(noop.flatMap((r) => r.requests)).toEqual([]);
    expect(seen).toEqual([]);
    // No password in the operator's log lines, events or status.
    const password = text(creds, "server.password");
    const events = await cp.kubectlOk(["get", "events", "-n", NS, "-o", "json"]);
    const status = JSON.stringify((await model("secured"))?.status ?? {});
    for (const where of [logs.join("\n"), events, status]) expect(where).not.toContain(password);
    await cp.kubectlOk(["delete", "ddnnmodel", "secured", "-n", NS]);
  });

  it("needs no permission beyond operator/rbac.yaml, and reads no Secret it does not manage", () => {
    const mine = cp.auditEvents().filter((e) => e.user.username === OPERATOR_USER);
    expect(mine.length).toBeGreaterThan(0);
    expect(
      mine.filter((e) => e.responseStatus?.code === 403).map((e) => `${e.verb} ${e.requestURI}`),
    ).toEqual([]);
    // Secrets are an owned kind (managed brokers with auth): listed and watched by the operator's
    // own label only, never read by name (an external broker's Secret is only referenced).
    const secrets = mine.filter((e) => e.objectRef?.resource === "secrets");
    expect(secrets.length).toBeGreaterThan(0);
    expect(
      secrets
        .filter((e) =>
          e.verb === "list" || e.verb === "watch"
            ? !e.requestURI.includes("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dddnn-operator")
            : // Writes only of the Secrets it builds (server-side apply, pruning).
              !/\/secrets\/[a-z0-9-]+-broker-(auth|credentials|cert)\?/.test(e.requestURI) ||
              !["patch", "delete"].includes(e.verb),
        )
        .map((e) => `${e.verb} ${e.requestURI}`),
    ).toEqual([]);
    expect(logs.join("\n")).not.toContain(cp.tokens.operator);
  });
});
