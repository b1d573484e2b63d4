/**
 * The operator loses its API server, then etcd restarts (issue 11, "faults"), against a real
 * kube-apiserver + etcd. The operator reaches the API server through a TCP proxy the test cuts:
 * for 30 s every connection is reset, while an administrator (straight to the API server) changes
 * the model. When the link returns the operator must pick the change up by itself (its resync is an
 * hour away: only its watches and retries can bring it), apply it, and end with every owned object
 * once, with the new spec, and status.observedGeneration caught up. Then etcd is killed and started
 * again on its data, and the same must hold for a change made after it.
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { KubeClient, KubeObject } from "../../operator/kube.js";
import { Operator } from "../../operator/operator.js";
import type { Condition, DDNNModelStatus } from "../../operator/spec.js";
import { type ControlPlane, REPO_ROOT } from "../cluster/control-plane.js";
import {
  adminClient,
  BundleServer,
  chartOperatorOptions,
  DEMO_DIGEST_URL,
  demoBundleBytes,
  getOrUndefined,
  kubeConfigVia,
  markDaemonSetReady,
  markDeploymentReady,
  StallingProxy,
  sleep,
  startCluster,
  waitFor,
} from "./harness.js";

const NS = "fog";
const NAME = "demo";
const EXAMPLE = join(REPO_ROOT, "examples", "ddnnmodel.yaml");
const OUTAGE_MS = 30_000;
// The operator's informers and retries back off while the API is gone: allow them time to return.
const CATCH_UP_MS = 120_000;

type Model = KubeObject & {
  metadata: KubeObject["metadata"] & { generation: number; uid: string };
  status?: DDNNModelStatus;
};
type Workload = KubeObject & {
  spec: {
    replicas?: number;
    template: { spec: { containers: { env: { name: string; value?: string }[] }[] } };
  };
};

const KINDS = [
  { apiVersion: "apps/v1", plural: "deployments" },
  { apiVersion: "apps/v1", plural: "daemonsets" },
  { apiVersion: "v1", plural: "services" },
  { apiVersion: "v1", plural: "configmaps" },
  { apiVersion: "v1", plural: "secrets" },
] as const;

let cp: ControlPlane;
let admin: KubeClient;
let operator: Operator;
let proxy: StallingProxy;
const bundles = new BundleServer();
const logs: string[] = [];
const savedProxy = process.env.HTTP_PROXY;

const model = () =>
  getOrUndefined<Model>(admin, {
    apiVersion: "fog.ddnn.io/v1alpha1",
    plural: "ddnnmodels",
    namespace: NS,
    name: NAME,
  });
const workload = (plural: "deployments" | "daemonsets", name: string) =>
  getOrUndefined<Workload>(admin, { apiVersion: "apps/v1", plural, namespace: NS, name });
const envOf = (w: Workload | undefined, name: string) =>
  w?.spec.template.spec.containers[0]?.env.find((e) => e.name === name)?.value;
const cond = (m: Model | undefined, type: string): Condition | undefined =>
  m?.status?.conditions?.find((c) => c.type === type);

/** "kind/name" of every object in the namespace the model owns, sorted, duplicates kept. */
async function owned(uid: string): Promise<string[]> {
  const out: string[] = [];
  for (const k of KINDS) {
    const list = await admin.list({ ...k, namespace: NS });
    for (const o of list.items)
      if ((o.metadata?.ownerReferences ?? []).some((r) => r.uid === uid))
        out.push(`${k.plural}/${o.metadata?.name}`);
  }
  return out.sort();
}

async function markAllReady(): Promise<void> {
  for (const c of ["broker", "server", "edge"])
    if (await workload("deployments", `${NAME}-${c}`))
      await markDeploymentReady(admin, NS, `${NAME}-${c}`);
  if (await workload("daemonsets", `${NAME}-device`))
    await markDaemonSetReady(admin, NS, `${NAME}-device`, 2);
}

/** Waits until the model's current generation is rolled out and observed, and status is Ready. */
async function caughtUp(what: string, replicas: number, threshold: string): Promise<Model> {
  await waitFor(
    `${what}: the server Deployment and device DaemonSet carry the new spec`,
    async () => {
      const server = await workload("deployments", `${NAME}-server`);
      const device = await workload("daemonsets", `${NAME}-device`);
      return server?.spec.replicas === replicas && envOf(device, "DDNN_THRESHOLDS") === threshold;
    },
    CATCH_UP_MS,
    500,
  );
  await markAllReady();
  return waitFor(
    `${what}: status.observedGeneration equals generation and Ready is True`,
    async () => {
      const m = await model();
      return m &&
        m.status?.observedGeneration === m.metadata.generation &&
        cond(m, "Ready")?.status === "True" &&
        cond(m, "Ready")?.observedGeneration === m.metadata.generation
        ? m
        : undefined;
    },
    CATCH_UP_MS,
    500,
  );
}

async function changeModel(replicas: number, device: number): Promise<void> {
  await admin.mergePatch(
    { apiVersion: "fog.ddnn.io/v1alpha1", plural: "ddnnmodels", namespace: NS, name: NAME },
    { spec: { exits: { device }, tiers: { server: { replicas } } } },
  );
}

beforeAll(async () => {
  cp = await startCluster();
  admin = adminClient(cp);
  bundles.files.set(DEMO_DIGEST_URL, demoBundleBytes());
  process.env.HTTP_PROXY = await bundles.start();
  proxy = new StallingProxy(new URL(cp.server));
  const via = await proxy.start();
  operator = new Operator({
    kubeConfig: kubeConfigVia(cp, "operator", via),
    identity: "api-outage-test",
    images: { image: "ddnn-fog:test", brokerImage: "eclipse-mosquitto:2" },
    leaderElection: false,
    httpPort: 0,
    httpHost: "127.0.0.1",
    // An hour: recovery must come from the watches and retries, not from a periodic resync.
    resyncMs: 3_600_000,
    retryBundleMs: 1_000,
    ...chartOperatorOptions(),
    log: { info: (m) => logs.push(m), warn: (m) => logs.push(`warn ${m}`) },
  });
  await operator.start();
}, 300_000);

afterAll(async () => {
  await operator?.stop();
  await proxy?.stop();
  await bundles.stop();
  if (savedProxy === undefined) delete process.env.HTTP_PROXY;
  else process.env.HTTP_PROXY = savedProxy;
  await cp?.stop();
}, 120_000);

describe("the operator survives losing the API server and an etcd restart", () => {
  it("a 30 s API outage with a spec change in it, then an etcd restart: every owned object once, new spec, status caught up", async () => {
    await cp.kubectlOk(["apply", "-f", EXAMPLE]);
    const first = await caughtUp("initial rollout", 2, "device=0.4");
    const uid = first.metadata.uid;
    const objects = await owned(uid);
    expect(objects).toContain("deployments/demo-server");
    expect(objects).toContain("daemonsets/demo-device");
    expect(new Set(objects).size).toBe(objects.length);

    // The API server is gone for the operator; the administrator changes the model meanwhile.
    proxy.cut();
    const cutAt = performance.now();
    await changeModel(3, 0.5);
    const during = (await model())!;
    expect(during.metadata.generation).toBe(first.metadata.generation + 1);
    await sleep(OUTAGE_MS - (performance.now() - cutAt));
    // Nothing could reach the API server on the operator's behalf.
    expect((await workload("deployments", `${NAME}-server`))?.spec.replicas).toBe(2);
    proxy.restore();
    const restored = performance.now();
    const afterOutage = await caughtUp("after the API outage", 3, "device=0.5");
    const outageCatchUpS = (performance.now() - restored) / 1000;
    expect(afterOutage.metadata.uid).toBe(uid);
    expect(afterOutage.status?.observedGeneration).toBe(during.metadata.generation);
    expect(await owned(uid)).toEqual(objects);

    // etcd dies and comes back on its data; the next change must still be carried out.
    const etcdAt = performance.now();
    await cp.restartEtcd(5_000);
    const etcdBackS = (performance.now() - etcdAt) / 1000;
    const survived = (await model())!;
    expect(survived.metadata.uid).toBe(uid);
    expect(survived.metadata.generation).toBe(during.metadata.generation);
    expect(await owned(uid)).toEqual(objects);
    const changedAt = performance.now();
    await changeModel(4, 0.45);
    const afterEtcd = await caughtUp("after the etcd restart", 4, "device=0.45");
    const etcdCatchUpS = (performance.now() - changedAt) / 1000;
    expect(afterEtcd.status?.observedGeneration).toBe(during.metadata.generation + 1);
    expect(await owned(uid)).toEqual(objects);
    console.log(
      `api-outage: ${JSON.stringify({
        outageS: OUTAGE_MS / 1000,
        catchUpAfterOutageS: Number(outageCatchUpS.toFixed(1)),
        etcdDownAndBackS: Number(etcdBackS.toFixed(1)),
        catchUpAfterEtcdS: Number(etcdCatchUpS.toFixed(1)),
        ownedObjects: objects.length,
        operatorWarnings: logs.filter((l) => l.startsWith("warn")).length,
      })}`,
    );
  }, 600_000);
});
