/**
 * A multi-view DDNNModel against a real kube-apiserver: `kubectl apply` of
 * examples/ddnnmodel-views.yaml (served the real models/fashion-views3 bundle) makes one device
 * DaemonSet per view and the fusing gateway; status reports each view; a view left unplaced, views
 * for a one-view bundle, and an archive without a view's file are reported by name and roll
 * nothing out; going back to every view placed rolls out again. (The CRD's own refusals of bad
 * placements are in crd-validation.test.ts, test/fixtures/invalid/views-*.yaml.)
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
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
  markDaemonSetReady,
  markDeploymentReady,
  sleep,
  startCluster,
  waitFor,
} from "./harness.js";

const NS = "fog";
const NAME = "fashion-views";
const EXAMPLE = join(REPO_ROOT, "examples", "ddnnmodel-views.yaml");
const example = parse(readFileSync(EXAMPLE, "utf8").split(/^---$/m)[1]!) as {
  spec: { bundle: { url: string; sha256: string } };
};
const VIEWS_DIR = join(REPO_ROOT, "models", "fashion-views3");
const VIEW_FILES = ["device-view0.onnx", "device-view1.onnx", "device-view2.onnx"];

/** The shipped multi-view bundle as a .tar.gz of ddnn.json, the server and the given view files. */
function packViews(views: readonly string[]): Uint8Array {
  return new Uint8Array(
    execFileSync("tar", ["-czf", "-", "-C", VIEWS_DIR, "ddnn.json", "server.onnx", ...views]),
  );
}

type Container = {
  args: string[];
  env: { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[];
};
type Workload = KubeObject & {
  metadata: KubeObject["metadata"] & { generation: number };
  spec: {
    selector: { matchLabels: Record<string, string> };
    strategy?: { type: string };
    template: { spec: { containers: Container[]; nodeSelector?: Record<string, string> } };
  };
};
type Model = KubeObject & { status?: DDNNModelStatus; metadata: { generation: number } };

const env = (w: Workload) =>
  Object.fromEntries(
    w.spec.template.spec.containers[0]!.env.map((e) => [
      e.name,
      e.value ?? `ref:${e.valueFrom?.fieldRef?.fieldPath}`,
    ]),
  );
const cond = (m: Model | undefined, type: string): Condition | undefined =>
  m?.status?.conditions?.find((c) => c.type === type);

let cp: ControlPlane;
let admin: KubeClient;
let operator: Operator;
const bundles = new BundleServer();
const savedProxy = process.env.HTTP_PROXY;

const get =
  <T>(apiVersion: string, plural: string) =>
  (name: string) =>
    getOrUndefined<T>(admin, { apiVersion, plural, namespace: NS, name });
const deployment = get<Workload>("apps/v1", "deployments");
const daemonSet = get<Workload>("apps/v1", "daemonsets");
const model = get<Model>("fog.ddnn.io/v1alpha1", "ddnnmodels");

async function warnings(reason: string, of = NAME): Promise<string[]> {
  const out = await cp.kubectlOk([
    "get",
    "events",
    "-n",
    NS,
    "--field-selector",
    `involvedObject.name=${of},reason=${reason}`,
    "-o",
    "json",
  ]);
  return (JSON.parse(out).items as { type: string; message: string }[])
    .filter((e) => e.type === "Warning")
    .map((e) => e.message);
}

/** Waits for BundleVerified=False with `reason` for the model's current generation. */
async function refusedWith(reason: string): Promise<Model> {
  return waitFor(`BundleVerified=False ${reason}`, async () => {
    const m = await model(NAME);
    const c = cond(m, "BundleVerified");
    return c?.status === "False" &&
      c.reason === reason &&
      m?.status?.observedGeneration === m?.metadata.generation
      ? m
      : undefined;
  });
}

const patchSpec = (patch: object) =>
  cp.kubectlOk(["patch", "ddnn", "-n", NS, NAME, "--type=merge", "-p", JSON.stringify(patch)]);

beforeAll(async () => {
  cp = await startCluster();
  admin = adminClient(cp);
  const proxy = await bundles.start();
  bundles.files.set(example.spec.bundle.url, packViews(VIEW_FILES));
  bundles.files.set(DEMO_DIGEST_URL, demoBundleBytes());
  process.env.HTTP_PROXY = proxy;
  operator = new Operator({
    kubeConfig: cp.kubeConfig("operator"),
    identity: "views-test",
    images: { image: "ddnn-fog:test", brokerImage: "eclipse-mosquitto:2" },
    leaderElection: false,
    httpPort: 0,
    httpHost: "127.0.0.1",
    resyncMs: 3_600_000,
    retryBundleMs: 500,
    log: { info: () => {}, warn: () => {} },
    ...chartOperatorOptions(),
  });
  await operator.start();
}, 180_000);

afterAll(async () => {
  await operator?.stop();
  await bundles.stop();
  if (savedProxy === undefined) delete process.env.HTTP_PROXY;
  else process.env.HTTP_PROXY = savedProxy;
  await cp?.stop();
});

describe("a multi-view DDNNModel against a real kube-apiserver", () => {
  it("kubectl apply of examples/ddnnmodel-views.yaml runs one DaemonSet per view and the fusing gateway; status reports each view", async () => {
    expect(await cp.kubectlOk(["apply", "-f", EXAMPLE])).toContain(
      `ddnnmodel.fog.ddnn.io/${NAME} created`,
    );
    const views = await Promise.all(
      [0, 1, 2].map((v) =>
        waitFor(`the DaemonSet of view ${v}`, () => daemonSet(`${NAME}-device-view${v}`)),
      ),
    );
    for (const [v, ds] of views.entries()) {
      expect(ds.spec.template.spec.containers[0]!.args).toEqual(["agent"]);
      expect(env(ds)).toMatchObject({
        DDNN_VIEW: String(v),
        DDNN_STAGES: "device",
        DDNN_CAPTURE_SLOT_MS: "100",
        DDNN_SOURCE: "http",
        // Named by node and view; the kubelet expands $(NODE_NAME), set from spec.nodeName.
        NODE_NAME: "ref:spec.nodeName",
        DDNN_DEVICE_ID: `$(NODE_NAME)-view${v}`,
        DDNN_BUNDLE_DIGEST: example.spec.bundle.sha256,
      });
      expect(ds.spec.selector.matchLabels).toMatchObject({ "fog.ddnn.io/view": String(v) });
    }
    expect(views.map((ds) => ds.spec.template.spec.nodeSelector)).toEqual([
      { "fog.ddnn.io/device": "true", "fog.ddnn.io/view": "0" },
      { "fog.ddnn.io/device": "true", "fog.ddnn.io/view": "1" },
      { "fog.ddnn.io/device": "true", "kubernetes.io/hostname": "cam-c" },
    ]);
    // No DaemonSet of the one-view kind.
    expect(await daemonSet(`${NAME}-device`)).toBeUndefined();

    const edge = await waitFor("the gateway Deployment", () => deployment(`${NAME}-edge`));
    expect(edge.spec.template.spec.containers[0]!.args).toEqual(["gateway"]);
    expect(env(edge)).not.toHaveProperty("DDNN_STAGES");
    expect(env(edge)).toMatchObject({ DDNN_THRESHOLDS: "device=0.4", DDNN_FUSION_WINDOW_MS: "50" });
    expect(edge.spec.strategy).toEqual({
      type: "RollingUpdate",
      rollingUpdate: { maxSurge: 0, maxUnavailable: 1 },
    });
    const server = await waitFor("the server Deployment", () => deployment(`${NAME}-server`));
    expect(env(server)).toMatchObject({ DDNN_STAGES: "server" });

    // What the Deployment and DaemonSet controllers would write (no kubelets here).
    for (const c of ["broker", "server", "edge"])
      await markDeploymentReady(admin, NS, `${NAME}-${c}`);
    await markDaemonSetReady(admin, NS, `${NAME}-device-view0`, 1);
    await markDaemonSetReady(admin, NS, `${NAME}-device-view1`, 2);
    const waiting = await waitFor("DevicesReady=False for view 2", async () => {
      const m = await model(NAME);
      return cond(m, "DevicesReady")?.message.startsWith("view 2") ? m : undefined;
    });
    expect(cond(waiting, "Ready")).toMatchObject({ status: "False", reason: "DevicesNotReady" });
    expect(cond(waiting, "EdgeReady")).toMatchObject({ status: "True", reason: "Available" });

    await markDaemonSetReady(admin, NS, `${NAME}-device-view2`, 1);
    const ready = await waitFor("Ready=True", async () => {
      const m = await model(NAME);
      return cond(m, "Ready")?.status === "True" ? m : undefined;
    });
    expect(ready.status?.views).toEqual([
      { view: 0, desired: 1, ready: 1, updated: 1 },
      { view: 1, desired: 2, ready: 2, updated: 2 },
      { view: 2, desired: 1, ready: 1, updated: 1 },
    ]);
    expect(ready.status?.devicesReady).toBe("4/4");
    expect(cond(ready, "DevicesReady")?.message).toBe(
      "device agents of every view ready: view 0 1/1, view 1 2/2, view 2 1/1",
    );
    const columns = await cp.kubectlOk(["get", "ddnn", "-n", NS, NAME]);
    expect(columns).toMatch(/fashion-views\s+True\s+4\/4\s+8fe880d041ff/);
  });

  it("a view of the bundle left unplaced is named in status and an event; nothing changes until it is placed", async () => {
    const before = await Promise.all(
      [0, 1, 2].map(async (v) => (await daemonSet(`${NAME}-device-view${v}`))!),
    );
    await patchSpec({ spec: { tiers: { device: { views: [{ view: 0 }, { view: 1 }] } } } });
    const m = await refusedWith("ViewPlacementMismatch");
    const message =
      "the bundle has 3 views but tiers.device.views does not place view(s) 2: place each of views 0..2 once";
    expect(cond(m, "BundleVerified")!.message).toBe(`${message}; nothing new is rolled out`);
    expect(cond(m, "Ready")).toMatchObject({ status: "False", reason: "BundleNotVerified" });
    await waitFor("the Warning event", async () =>
      (await warnings("ViewPlacementMismatch")).some((w) => w.startsWith(message)),
    );
    // What ran keeps running: all three views, as they were.
    for (const [v, ds] of before.entries()) {
      const now = (await daemonSet(`${NAME}-device-view${v}`))!;
      expect(now.metadata.generation).toBe(ds.metadata.generation);
    }
    expect(m.status?.views?.map((x) => x.view)).toEqual([0, 1, 2]);

    await patchSpec({
      spec: { tiers: { device: { views: [{ view: 0 }, { view: 1 }, { view: 2 }] } } },
    });
    const back = await waitFor("BundleVerified=True again", async () => {
      const x = await model(NAME);
      return cond(x, "BundleVerified")?.status === "True" &&
        x?.status?.observedGeneration === x?.metadata.generation
        ? x
        : undefined;
    });
    // View 2 now runs on the nodes labelled for it, the default.
    const view2 = (await daemonSet(`${NAME}-device-view2`))!;
    expect(view2.spec.template.spec.nodeSelector).toEqual({
      "fog.ddnn.io/device": "true",
      "fog.ddnn.io/view": "2",
    });
    expect(cond(back, "BundleVerified")!.message).toContain("fashion-views3 1.0.0");
  });

  it("views for a one-view bundle, or a bundle without views placement, are refused by name", async () => {
    // The demo bundle has one view (no views block in its ddnn.json).
    const demo = parse(
      readFileSync(join(REPO_ROOT, "examples", "ddnnmodel.yaml"), "utf8").split(/^---$/m)[1]!,
    ) as {
      spec: { bundle: { sha256: string } };
    };
    await patchSpec({
      spec: {
        bundle: { url: DEMO_DIGEST_URL, sha256: demo.spec.bundle.sha256 },
        placement: { device: "device", edge: "edge", server: "server" },
      },
    });
    const one = await refusedWith("ViewPlacementMismatch");
    expect(cond(one, "BundleVerified")!.message).toContain(
      "tiers.device.views places 3 views but the bundle has one view (no views block in its ddnn.json): leave tiers.device.views out",
    );

    // Back to the multi-view bundle, without tiers.device.views.
    await cp.kubectlOk([
      "patch",
      "ddnn",
      "-n",
      NS,
      NAME,
      "--type=json",
      "-p",
      JSON.stringify([
        { op: "replace", path: "/spec/bundle", value: example.spec.bundle },
        { op: "replace", path: "/spec/placement", value: { device: "device", server: "server" } },
        { op: "remove", path: "/spec/tiers/device/views" },
      ]),
    ]);
    const none = await refusedWith("ViewPlacementMismatch");
    expect(cond(none, "BundleVerified")!.message).toContain(
      "the bundle has 3 views (ddnn.json views) but tiers.device.views places none",
    );
    // Still the last verified rollout: the three views' DaemonSets, no one-view DaemonSet.
    expect(await daemonSet(`${NAME}-device`)).toBeUndefined();
    expect(await daemonSet(`${NAME}-device-view2`)).toBeDefined();
  });

  it("an archive without a view's file is an invalid bundle naming the file", async () => {
    const url = "http://models.fog.svc/fashion-views3-no-view2.tar.gz";
    bundles.files.set(url, packViews(VIEW_FILES.slice(0, 2)));
    await patchSpec({
      spec: {
        bundle: { url, sha256: example.spec.bundle.sha256 },
        tiers: { device: { views: [{ view: 0 }, { view: 1 }, { view: 2 }] } },
      },
    });
    const m = await refusedWith("InvalidBundle");
    expect(cond(m, "BundleVerified")!.message).toContain(
      "[device-view2.onnx]: missing (named by ddnn.json views.devices[2].file)",
    );
  });

  it("a model whose bundle gains views swaps its device DaemonSet for one per view and updates its gateway in place; and back", async () => {
    const name = "views-switch";
    const demo = parse(
      readFileSync(join(REPO_ROOT, "examples", "ddnnmodel.yaml"), "utf8").split(/^---$/m)[1]!,
    ) as { spec: { bundle: { sha256: string } } };
    const oneView = {
      apiVersion: "fog.ddnn.io/v1alpha1",
      kind: "DDNNModel",
      metadata: { name, namespace: NS },
      spec: {
        bundle: { url: DEMO_DIGEST_URL, sha256: demo.spec.bundle.sha256 },
        placement: { device: "device", edge: "edge", server: "server" },
      },
    };
    await cp.kubectlOk(["apply", "-f", "-"], { input: JSON.stringify(oneView) });
    await waitFor("the one-view device DaemonSet", () => daemonSet(`${name}-device`));
    const before = await waitFor("the edge Deployment", () => deployment(`${name}-edge`));
    expect(env(before)).toMatchObject({ DDNN_STAGES: "edge" });

    const switchTo = (ops: object[]) =>
      cp.kubectlOk(["patch", "ddnn", "-n", NS, name, "--type=json", "-p", JSON.stringify(ops)]);
    await switchTo([
      { op: "replace", path: "/spec/bundle", value: example.spec.bundle },
      { op: "replace", path: "/spec/placement", value: { device: "device", server: "server" } },
      {
        op: "add",
        path: "/spec/tiers/device/views",
        value: [{ view: 0 }, { view: 1 }, { view: 2 }],
      },
    ]);
    await Promise.all(
      [0, 1, 2].map((v) => waitFor(`view ${v}`, () => daemonSet(`${name}-device-view${v}`))),
    );
    await waitFor(
      "the one-view DaemonSet to go",
      async () => (await daemonSet(`${name}-device`)) === undefined,
    );
    const fusing = await waitFor("the gateway updated to fuse", async () => {
      const d = await deployment(`${name}-edge`);
      return d && !("DDNN_STAGES" in env(d)) ? d : undefined;
    });
    // The same Deployment, updated in place (a rolling update that stops the old gateway first).
    expect(fusing.metadata.uid).toBe(before.metadata.uid);
    expect(fusing.spec.strategy).toEqual({
      type: "RollingUpdate",
      rollingUpdate: { maxSurge: 0, maxUnavailable: 1 },
    });
    const m = await waitFor("BundleVerified=True for the views", async () => {
      const x = await model(name);
      return cond(x, "BundleVerified")?.status === "True" &&
        x?.status?.observedGeneration === x?.metadata.generation
        ? x
        : undefined;
    });
    expect(cond(m, "Ready")?.reason).not.toBe("ApplyFailed");
    expect(await warnings("ApplyFailed", name)).toEqual([]);

    await switchTo([
      { op: "replace", path: "/spec/bundle", value: oneView.spec.bundle },
      { op: "replace", path: "/spec/placement", value: oneView.spec.placement },
      { op: "remove", path: "/spec/tiers/device/views" },
    ]);
    await waitFor("the one-view DaemonSet back", () => daemonSet(`${name}-device`));
    await waitFor("the view DaemonSets to go", async () => {
      const left = await Promise.all([0, 1, 2].map((v) => daemonSet(`${name}-device-view${v}`)));
      return left.every((d) => d === undefined);
    });
    const back = await waitFor("the gateway running the edge stage again", async () => {
      const d = await deployment(`${name}-edge`);
      return d && env(d).DDNN_STAGES === "edge" ? d : undefined;
    });
    expect(back.spec.strategy).toEqual({
      type: "RollingUpdate",
      rollingUpdate: { maxSurge: "25%", maxUnavailable: "25%" },
    });
    // The per-view status goes with the views, and the status then stays as it is.
    const settled = await waitFor(
      "a status without views",
      async () => {
        const x = await model(name);
        return x?.status?.views === undefined &&
          cond(x, "BundleVerified")?.status === "True" &&
          x?.status?.observedGeneration === x?.metadata.generation
          ? x
          : undefined;
      },
      10_000,
    );
    await sleep(1500);
    expect((await model(name))!.metadata.resourceVersion).toBe(settled.metadata.resourceVersion);
    await cp.kubectlOk(["delete", "ddnn", "-n", NS, name]);
  });
});
