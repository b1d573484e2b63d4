/**
 * Multi-view models (tiers.device.views): the spec's rules, the placement check against the
 * bundle's views, the per-view DaemonSets and the fusing gateway the builders make, and the
 * per-view status.
 */
import type { V1DaemonSet, V1Deployment, V1EnvVar, V1Secret } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import {
  buildInput,
  chartOperator,
  exampleSpec,
  modelOf,
  THREE_STAGES,
  THREE_VIEWS,
  viewsSpec,
} from "../test/operator/model-fixtures.js";
import { buildOwnedObjects, type OwnedObject } from "./builders.js";
import { type BundleFacts, planTiers } from "./placement.js";
import { type DDNNModelSpecInput, parseModel } from "./spec.js";
import { type BundleCheck, desiredStatus, type Observed } from "./status.js";

/** Three nodes, one per view, as a lab labels them. */
const NODES = ["cam-a", "cam-b", "cam-c"];

const input = (spec: DDNNModelSpecInput = viewsSpec(), facts: BundleFacts = THREE_VIEWS) =>
  buildInput(spec, facts, chartOperator(NODES, 3));

function envOf(w: V1Deployment | V1DaemonSet): Record<string, string | V1EnvVar["valueFrom"]> {
  return Object.fromEntries(
    (w.spec!.template.spec!.containers[0]!.env ?? []).map((e) => [e.name, e.value ?? e.valueFrom]),
  );
}

const named = (objs: OwnedObject[], kind: string, name: string) =>
  objs.find((o) => o.kind === kind && o.metadata!.name === name);

function spec(edit: (s: DDNNModelSpecInput) => void): DDNNModelSpecInput {
  const s = viewsSpec();
  edit(s);
  return s;
}

/** The first problem parseModel finds in a spec (as the operator reads an object). */
function refusal(s: DDNNModelSpecInput): string | undefined {
  const r = parseModel({ metadata: { name: "m", namespace: "fog", uid: "u" }, spec: s });
  return r.ok ? undefined : r.error;
}

describe("tiers.device.views in the spec", () => {
  it("is optional: every existing spec parses as before, without views", () => {
    expect(modelOf(exampleSpec()).spec.tiers.device.views).toBeUndefined();
    expect(modelOf(viewsSpec()).spec.tiers.device.views).toEqual([
      { view: 0 },
      { view: 1 },
      { view: 2 },
    ]);
  });

  it.each([
    ["one entry", [{ view: 0 }], "2 or more"],
    ["a view twice", [{ view: 0 }, { view: 1 }, { view: 1 }], "each view is placed once"],
    ["a gap", [{ view: 0 }, { view: 2 }], "N entries place views 0..N-1"],
    ["a negative view", [{ view: -1 }, { view: 0 }], "spec.tiers.device.views.0.view"],
  ])("refuses %s", (_, views, message) => {
    expect(refusal(spec((s) => (s.tiers!.device!.views = views)))).toContain(message);
  });

  it("refuses views without a stage on the device tier, and a second gateway", () => {
    expect(refusal(spec((s) => (s.placement = { device: "server", server: "server" })))).toMatch(
      /^spec\.tiers\.device\.views: tiers.device.views needs the bundle's first stage on the device tier/,
    );
    expect(refusal(spec((s) => (s.tiers!.edge = { replicas: 2 })))).toMatch(
      /^spec\.tiers\.edge\.replicas: with tiers.device.views, tiers.edge.replicas is 0 or 1/,
    );
    expect(refusal(spec((s) => (s.tiers!.edge = { replicas: 1 })))).toBeUndefined();
  });
});

describe("placement of a multi-view bundle (planTiers)", () => {
  const refused = (s: DDNNModelSpecInput, facts: BundleFacts) => {
    const r = planTiers(modelOf(s).spec, facts);
    if (r.ok) throw new Error("placement accepted");
    return r;
  };

  it("accepts every view placed once, stage 0 on the device tier", () => {
    expect(planTiers(modelOf(viewsSpec()).spec, THREE_VIEWS)).toEqual({
      ok: true,
      plan: { device: ["device"], edge: [], server: ["server"] },
    });
  });

  it("a multi-view bundle without tiers.device.views names the views to place", () => {
    const r = refused({ ...viewsSpec(), tiers: {} }, THREE_VIEWS);
    expect(r.reason).toBe("ViewPlacementMismatch");
    expect(r.message).toBe(
      "the bundle has 3 views (ddnn.json views) but tiers.device.views places none: say which device nodes see which view, for example views: [{view: 0}, {view: 1}, {view: 2}] with each view's nodes labelled fog.ddnn.io/view=<view>",
    );
  });

  it("views for a one-view bundle are refused", () => {
    const facts = { ...THREE_VIEWS, views: undefined };
    const r = refused(viewsSpec(), facts);
    expect(r.reason).toBe("ViewPlacementMismatch");
    expect(r.message).toContain(
      "tiers.device.views places 3 views but the bundle has one view (no views block in its ddnn.json)",
    );
  });

  it("a view of the bundle left unplaced, or a view it does not have, is named", () => {
    const two = spec((s) => (s.tiers!.device!.views = [{ view: 0 }, { view: 1 }]));
    expect(refused(two, THREE_VIEWS).message).toBe(
      "the bundle has 3 views but tiers.device.views does not place view(s) 2: place each of views 0..2 once",
    );
    expect(refused(viewsSpec(), { ...THREE_VIEWS, views: 2 }).message).toBe(
      "the bundle has 2 views but tiers.device.views places view(s) 2, which the bundle does not have: place each of views 0..1 once",
    );
  });

  it("stage 0 alone runs on the device tier; middle stages need the edge", () => {
    const deep: BundleFacts = { ...THREE_STAGES, views: 3 };
    const both = {
      ...viewsSpec(),
      placement: { device: "device", edge: "device", server: "server" },
    } as const;
    expect(refused(both, deep).message).toContain(
      "a multi-view bundle's device tier runs stage device only (each view's agent runs it, the gateway fuses them): place stage(s) edge on edge or server",
    );
    const noEdge = {
      ...viewsSpec(),
      placement: { device: "device", edge: "server", server: "server" },
    } as const;
    expect(refused(noEdge, deep).message).toBe(
      "the gateway that fuses the views also runs the bundle's middle stage(s) edge: place them on edge",
    );
    const onEdge = {
      ...viewsSpec(),
      placement: { device: "device", edge: "edge", server: "server" },
    } as const;
    expect(planTiers(modelOf(onEdge).spec, deep).ok).toBe(true);
  });
});

describe("builders of a multi-view model", () => {
  it("make one device DaemonSet per view and a fusing gateway even without an edge stage", () => {
    const objs = buildOwnedObjects(input());
    expect(objs.map((o) => `${o.kind}/${o.metadata!.name}`).sort()).toEqual([
      "ConfigMap/demo-broker",
      "ConfigMap/demo-identity-ca",
      "DaemonSet/demo-device-view0",
      "DaemonSet/demo-device-view1",
      "DaemonSet/demo-device-view2",
      "Deployment/demo-broker",
      "Deployment/demo-edge",
      "Deployment/demo-server",
      "Secret/demo-broker-auth",
      "Secret/demo-broker-cert",
      "Secret/demo-broker-credentials",
      "Service/demo-broker",
      "Service/demo-server",
    ]);
  });

  it("give each view's agent on each node its own broker identity, <node>-view<v>, for the views topic only", () => {
    const objs = buildOwnedObjects(input());
    const secret = named(objs, "Secret", "demo-broker-auth") as V1Secret;
    const text = (k: string) => Buffer.from(secret.data![k]!, "base64").toString("utf8");
    const users = text("passwd")
      .trim()
      .split("\n")
      .map((l) => l.slice(0, l.indexOf(":")));
    // Each node sees one view (chartOperator labels cam-a 0, cam-b 1, cam-c 2).
    expect(users).toEqual([
      "fog/demo/server",
      "fog/demo/edge",
      "fog/demo/profile",
      "fog/demo/device/cam-a-view0",
      "fog/demo/device/cam-b-view1",
      "fog/demo/device/cam-c-view2",
    ]);
    const acl = text("acl");
    expect(acl).toContain(
      [
        "user fog/demo/device/cam-b-view1",
        "topic read ddnn/fog/demo/reply/cam-b-view1",
        "topic read ddnn/fog/demo/reply/cam-b-view1/views",
        "topic read ddnn/fog/demo/input/cam-b-view1",
        "topic write ddnn/fog/demo/events",
        "topic write ddnn/fog/demo/input/cam-b-view1/result",
        "topic write ddnn/fog/demo/views",
      ].join("\n"),
    );
    // The fusing gateway reads the views (and its own replies), sends on to the server's stage.
    expect(acl).toContain(
      [
        "user fog/demo/edge",
        "topic read ddnn/fog/demo/views",
        "topic read ddnn/fog/demo/reply/+",
        "topic write ddnn/fog/demo/reply/+",
        "topic write ddnn/fog/demo/reply/+/views",
        "topic write ddnn/fog/demo/events",
        "topic write ddnn/fog/demo/server/req",
      ].join("\n"),
    );
    // A lab node that sees two views holds two identities.
    const lab = buildOwnedObjects(
      buildInput(viewsSpec(), THREE_VIEWS, {
        ...chartOperator(),
        nodes: [{ name: "lab", labels: { "fog.ddnn.io/device": "true", "fog.ddnn.io/view": "0" } }],
      }),
    );
    const labAuth = named(lab, "Secret", "demo-broker-auth") as V1Secret;
    expect(Buffer.from(labAuth.data!.passwd!, "base64").toString("utf8")).toContain(
      "fog/demo/device/lab-view0:",
    );
  });

  it("start each view's agent with --view on the nodes of that view, named by its node and view", () => {
    const objs = buildOwnedObjects(input());
    for (const v of [0, 1, 2]) {
      const ds = named(objs, "DaemonSet", `demo-device-view${v}`) as V1DaemonSet;
      const pod = ds.spec!.template.spec!;
      expect(pod.nodeSelector).toEqual({
        "fog.ddnn.io/device": "true",
        "fog.ddnn.io/view": String(v),
      });
      expect(pod.containers[0]!.args).toEqual(["agent"]);
      expect(envOf(ds)).toMatchObject({
        DDNN_VIEW: String(v),
        DDNN_STAGES: "device",
        DDNN_SOURCE: "http",
        NODE_NAME: { fieldRef: { apiVersion: "v1", fieldPath: "spec.nodeName" } },
        DDNN_DEVICE_ID: `$(NODE_NAME)-view${v}`,
      });
      // Kubernetes expands $(NODE_NAME) only from a variable defined before it.
      const names = pod.containers[0]!.env!.map((e) => e.name);
      expect(names.indexOf("NODE_NAME")).toBeLessThan(names.indexOf("DDNN_DEVICE_ID"));
      // Each view's DaemonSet selects only its own Pods, which its template labels.
      const selector = ds.spec!.selector.matchLabels!;
      expect(selector).toEqual({
        "fog.ddnn.io/model": "demo",
        "app.kubernetes.io/component": "device",
        "fog.ddnn.io/view": String(v),
      });
      expect(ds.spec!.template.metadata!.labels).toMatchObject(selector);
      expect(ds.metadata!.labels).toMatchObject(selector);
      expect(ds.metadata!.ownerReferences![0]).toMatchObject({
        kind: "DDNNModel",
        uid: "uid-1234",
      });
    }
  });

  it("run the gateway that fuses with no stage of its own, stage 0's threshold, one at a time", () => {
    const s = spec((x) => {
      x.exits = { device: 0.35 };
      x.tiers!.edge = { fusionWindowMs: 80 };
      x.tiers!.device!.captureSlotMs = 40;
    });
    const objs = buildOwnedObjects(input(s));
    const edge = named(objs, "Deployment", "demo-edge") as V1Deployment;
    const e = envOf(edge);
    expect(edge.spec!.template.spec!.containers[0]!.args).toEqual(["gateway"]);
    expect(e).not.toHaveProperty("DDNN_STAGES");
    expect(e).toMatchObject({ DDNN_THRESHOLDS: "device=0.35", DDNN_FUSION_WINDOW_MS: "80" });
    expect(edge.spec!.strategy).toEqual({
      type: "RollingUpdate",
      rollingUpdate: { maxSurge: 0, maxUnavailable: 1 },
    });
    expect(edge.spec!.template.spec!.nodeSelector).toEqual({ "fog.ddnn.io/edge": "true" });
    const view1 = named(objs, "DaemonSet", "demo-device-view1") as V1DaemonSet;
    expect(envOf(view1)).toMatchObject({ DDNN_CAPTURE_SLOT_MS: "40" });
    const server = named(objs, "Deployment", "demo-server") as V1Deployment;
    expect(envOf(server)).toMatchObject({ DDNN_STAGES: "server" });
    expect(envOf(server)).not.toHaveProperty("DDNN_THRESHOLDS");
  });

  it("a view's nodeSelector replaces the view label, its source replaces the tier's", () => {
    const s = spec((x) => {
      x.tiers!.device!.views = [
        { view: 0, nodeSelector: { "kubernetes.io/hostname": "cam-a" } },
        { view: 1, nodeSelector: {}, source: { replay: { path: "/data/view1.idx" } } },
        { view: 2 },
      ];
    });
    const objs = buildOwnedObjects(input(s));
    const pod = (v: number) =>
      (named(objs, "DaemonSet", `demo-device-view${v}`) as V1DaemonSet).spec!.template.spec!;
    expect(pod(0).nodeSelector).toEqual({
      "fog.ddnn.io/device": "true",
      "kubernetes.io/hostname": "cam-a",
    });
    expect(pod(1).nodeSelector).toEqual({ "fog.ddnn.io/device": "true" });
    expect(pod(1).containers[0]!.env).toContainEqual({
      name: "DDNN_REPLAY_PATH",
      value: "/data/view1.idx",
    });
    expect(pod(1).volumes).toContainEqual({
      name: "replay",
      hostPath: { path: "/data/view1.idx", type: "File" },
    });
    expect(pod(1).containers[0]!.ports![0]!.hostPort).toBeUndefined();
    expect(pod(2).containers[0]!.ports![0]!.hostPort).toBe(8080);
  });

  it("a three-stage multi-view bundle's gateway runs its edge stage and fuses", () => {
    const s = spec((x) => {
      x.placement = { device: "device", edge: "edge", server: "server" };
      x.exits = { device: 0.4, edge: 0.3 };
    });
    const objs = buildOwnedObjects(input(s, { ...THREE_STAGES, views: 3 }));
    const e = envOf(named(objs, "Deployment", "demo-edge") as V1Deployment);
    expect(e).toMatchObject({ DDNN_STAGES: "edge", DDNN_THRESHOLDS: "device=0.4,edge=0.3" });
    // Its identity sends the fused features to its own edge stage (gateway/fusion.ts sends to
    // stage 1), reads them there, and sends on to the server's stage.
    const auth = named(objs, "Secret", "demo-broker-auth") as V1Secret;
    const acl = Buffer.from(auth.data!.acl!, "base64").toString("utf8");
    const edge = acl.slice(
      acl.indexOf("user fog/demo/edge"),
      acl.indexOf("\n\n", acl.indexOf("user fog/demo/edge")),
    );
    expect(edge.split("\n")).toEqual([
      "user fog/demo/edge",
      "topic read ddnn/fog/demo/views",
      "topic read ddnn/fog/demo/reply/+",
      "topic read ddnn/fog/demo/edge/req",
      "topic write ddnn/fog/demo/reply/+",
      "topic write ddnn/fog/demo/reply/+/views",
      "topic write ddnn/fog/demo/events",
      "topic write ddnn/fog/demo/edge/req",
      "topic write ddnn/fog/demo/server/req",
    ]);
  });

  it("leave a one-view model as it was: one DaemonSet named after the model, device id the node", () => {
    const objs = buildOwnedObjects(buildInput(exampleSpec(), THREE_STAGES));
    const ds = named(objs, "DaemonSet", "demo-device") as V1DaemonSet;
    expect(objs.filter((o) => o.kind === "DaemonSet")).toHaveLength(1);
    expect(envOf(ds)).not.toHaveProperty("DDNN_VIEW");
    expect(envOf(ds).DDNN_DEVICE_ID).toEqual({
      fieldRef: { apiVersion: "v1", fieldPath: "spec.nodeName" },
    });
    expect(ds.spec!.selector.matchLabels).not.toHaveProperty("fog.ddnn.io/view");
    const edge = named(objs, "Deployment", "demo-edge") as V1Deployment;
    expect(edge.spec!.strategy).toBeUndefined();
  });
});

describe("status of a multi-view model", () => {
  const model = modelOf(viewsSpec());
  const plan = planTiers(model.spec, THREE_VIEWS);
  if (!plan.ok) throw new Error(plan.message);
  const check: BundleCheck = { ok: true, facts: THREE_VIEWS, plan: plan.plan };
  const ready: V1Deployment = {
    metadata: { name: "d", generation: 1 },
    spec: { replicas: 1, selector: {}, template: {} },
    status: { observedGeneration: 1, replicas: 1, updatedReplicas: 1, availableReplicas: 1 },
  };
  const view = (v: number, ready: number, desired: number): V1DaemonSet => ({
    metadata: { name: `demo-device-view${v}`, generation: 1 },
    spec: {
      selector: {},
      template: {
        spec: {
          containers: [],
          nodeSelector: { "fog.ddnn.io/device": "true", "fog.ddnn.io/view": String(v) },
        },
      },
    },
    status: {
      observedGeneration: 1,
      desiredNumberScheduled: desired,
      currentNumberScheduled: desired,
      numberMisscheduled: 0,
      numberReady: ready,
      updatedNumberScheduled: desired,
    },
  });
  const observed = (views: Observed["views"]): Observed => ({
    broker: ready,
    server: ready,
    edge: ready,
    views,
  });
  const now = new Date("2026-01-01T00:00:00Z");
  const cond = (s: ReturnType<typeof desiredStatus>, type: string) =>
    s.conditions!.find((c) => c.type === type)!;

  it("reports each view's agents and their sum; Ready when every view is", () => {
    const s = desiredStatus(
      model,
      check,
      observed([
        { view: 0, daemonSet: view(0, 1, 1) },
        { view: 1, daemonSet: view(1, 2, 2) },
        { view: 2, daemonSet: view(2, 1, 1) },
      ]),
      now,
    );
    expect(s.views).toEqual([
      { view: 0, desired: 1, ready: 1, updated: 1 },
      { view: 1, desired: 2, ready: 2, updated: 2 },
      { view: 2, desired: 1, ready: 1, updated: 1 },
    ]);
    expect(s.devices).toEqual({ desired: 4, ready: 4, updated: 4 });
    expect(s.devicesReady).toBe("4/4");
    expect(cond(s, "DevicesReady")).toMatchObject({
      status: "True",
      message: "device agents of every view ready: view 0 1/1, view 1 2/2, view 2 1/1",
    });
    // The gateway fuses: EdgeReady is its Deployment's readiness, not NotPlaced.
    expect(cond(s, "EdgeReady")).toMatchObject({ status: "True", reason: "Available" });
    expect(cond(s, "Ready").status).toBe("True");
  });

  it("a view whose agents are not ready, or with no node, or not created, makes the model not Ready", () => {
    const notReady = desiredStatus(
      model,
      check,
      observed([
        { view: 0, daemonSet: view(0, 1, 1) },
        { view: 1, daemonSet: view(1, 0, 1) },
        { view: 2, daemonSet: view(2, 1, 1) },
      ]),
      now,
    );
    expect(cond(notReady, "DevicesReady")).toMatchObject({
      status: "False",
      reason: "NotReady",
      message: "view 1: DaemonSet demo-device-view1: 0/1 device agents ready",
    });
    expect(cond(notReady, "Ready")).toMatchObject({ status: "False", reason: "DevicesNotReady" });
    const noNode = desiredStatus(
      model,
      check,
      observed([
        { view: 0, daemonSet: view(0, 1, 1) },
        { view: 1, daemonSet: view(1, 1, 1) },
        { view: 2, daemonSet: view(2, 0, 0) },
      ]),
      now,
    );
    expect(cond(noNode, "DevicesReady")).toMatchObject({
      status: "False",
      reason: "NoViewNodes",
      message:
        "view 2: no node matches the device nodeSelector fog.ddnn.io/device=true,fog.ddnn.io/view=2, so its captures are fused without it",
    });
    const missing = desiredStatus(
      model,
      check,
      observed([{ view: 0, daemonSet: view(0, 1, 1) }, { view: 1 }, { view: 2 }]),
      now,
    );
    expect(cond(missing, "DevicesReady")).toMatchObject({
      status: "False",
      reason: "NotCreated",
      message: "view 1's device DaemonSet does not exist yet",
    });
  });
});
