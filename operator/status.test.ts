import type { V1DaemonSet, V1Deployment } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { DIGEST, exampleSpec, modelOf, THREE_STAGES } from "../test/operator/model-fixtures.js";
import { planTiers } from "./placement.js";
import {
  type BundleCheck,
  deploymentReady,
  desiredStatus,
  invalidSpecStatus,
  mergeConditions,
  sameStatus,
  wantedConditions,
} from "./status.js";

const model = modelOf(exampleSpec());
const plan = planTiers(model.spec, THREE_STAGES);
if (!plan.ok) throw new Error(plan.message);
const ok: BundleCheck = { ok: true, facts: THREE_STAGES, plan: plan.plan };

function deployment(
  ready: number,
  want = ready,
  generation = 1,
  observed = generation,
): V1Deployment {
  return {
    metadata: { name: "d", generation },
    spec: { replicas: want, selector: {}, template: {} },
    status: {
      observedGeneration: observed,
      replicas: want,
      updatedReplicas: want,
      readyReplicas: ready,
      availableReplicas: ready,
    },
  };
}
function daemonSet(ready: number, desired: number): V1DaemonSet {
  return {
    metadata: { name: "ds", generation: 1 },
    spec: {
      selector: {},
      template: { spec: { containers: [], nodeSelector: { "fog.ddnn.io/tier": "device" } } },
    },
    status: {
      observedGeneration: 1,
      desiredNumberScheduled: desired,
      currentNumberScheduled: desired,
      numberMisscheduled: 0,
      numberReady: ready,
      updatedNumberScheduled: desired,
    },
  };
}
const all = {
  broker: deployment(1),
  server: deployment(2),
  edge: deployment(1),
  device: daemonSet(3, 3),
};
const byType = <T extends { type: string }>(c: T[]) =>
  Object.fromEntries(c.map((x) => [x.type, x])) as Record<string, T>;

describe("conditions", () => {
  it("are all True when the bundle is verified and every workload is ready", () => {
    const c = byType(wantedConditions(model, ok, all));
    for (const t of [
      "Ready",
      "BundleVerified",
      "BrokerReady",
      "ServerReady",
      "EdgeReady",
      "DevicesReady",
    ])
      expect(c[t]).toMatchObject({ status: "True" });
    expect(c.BundleVerified!.message).toContain("demo-3stage 1.0.0");
  });

  it("name the first tier that is not ready in Ready's reason", () => {
    const c = byType(wantedConditions(model, ok, { ...all, server: deployment(1, 2) }));
    expect(c.ServerReady).toMatchObject({ status: "False", reason: "NotReady" });
    expect(c.Ready).toMatchObject({ status: "False", reason: "ServerNotReady" });
    expect(c.Ready!.message).toContain("1/2 replicas available");
  });

  it("wait for the Deployment controller to see a new generation", () => {
    expect(deploymentReady(deployment(2, 2, 4, 3), "server")).toMatchObject({
      status: "False",
      reason: "Progressing",
    });
  });

  it("report a bad bundle, and keep the running digest in status", () => {
    const bad: BundleCheck = {
      ok: false,
      reason: "DigestMismatch",
      message: "x.tar.gz: ddnn.json hashes to 00",
    };
    const running = {
      ...model,
      status: { bundleDigest: DIGEST, bundle: { name: "demo-3stage", version: "1.0.0" } },
    };
    const s = desiredStatus(running, bad, all, new Date(0));
    const c = byType(s.conditions!);
    expect(c.BundleVerified).toMatchObject({ status: "False", reason: "DigestMismatch" });
    expect(c.Ready).toMatchObject({ status: "False", reason: "BundleNotVerified" });
    expect(s.bundleDigest).toBe(DIGEST);
    expect(s.bundleDigestShort).toBe(DIGEST.slice(0, 12));
    expect(s.observedGeneration).toBe(3);
  });

  it("say NotPlaced for a tier no stage runs on, External for an external broker", () => {
    const spec = exampleSpec();
    spec.placement = { device: "server", edge: "server", server: "server" };
    spec.broker = { external: { url: "mqtt://b:1883" } };
    const m = modelOf(spec);
    const p = planTiers(m.spec, THREE_STAGES);
    if (!p.ok) throw new Error(p.message);
    const c = byType(
      wantedConditions(
        m,
        { ok: true, facts: THREE_STAGES, plan: p.plan },
        { server: deployment(2) },
      ),
    );
    expect(c.EdgeReady).toMatchObject({ status: "True", reason: "NotPlaced" });
    expect(c.DevicesReady).toMatchObject({ status: "True", reason: "NotPlaced" });
    expect(c.BrokerReady).toMatchObject({ status: "True", reason: "External" });
    expect(c.Ready).toMatchObject({ status: "True" });
  });

  it("say Ready=False with ApplyFailed for this generation when a write failed", () => {
    const s = desiredStatus(
      model,
      ok,
      all,
      new Date(0),
      "Deployment fashion-server: exceeded quota",
    );
    const ready = s.conditions?.find((c) => c.type === "Ready");
    expect(ready).toMatchObject({
      status: "False",
      reason: "ApplyFailed",
      message: "Deployment fashion-server: exceeded quota",
    });
    expect(ready?.observedGeneration).toBe(model.metadata.generation);
    expect(s.observedGeneration).toBe(model.metadata.generation);
  });

  it("count devices from the DaemonSet", () => {
    const s = desiredStatus(model, ok, { ...all, device: daemonSet(2, 3) }, new Date(0));
    expect(s.devices).toEqual({ desired: 3, ready: 2, updated: 3 });
    expect(s.devicesReady).toBe("2/3");
  });
});

describe("mergeConditions", () => {
  const t0 = new Date("2030-01-01T00:00:00Z");
  const t1 = new Date("2030-01-01T00:05:00Z");
  it("moves lastTransitionTime only when a condition's status changes", () => {
    const first = mergeConditions(
      undefined,
      [{ type: "Ready", status: "False", reason: "A", message: "a" }],
      1,
      t0,
    );
    expect(first[0]!.lastTransitionTime).toBe("2030-01-01T00:00:00Z");
    const sameStatus = mergeConditions(
      first,
      [{ type: "Ready", status: "False", reason: "B", message: "b" }],
      2,
      t1,
    );
    expect(sameStatus[0]).toMatchObject({
      lastTransitionTime: "2030-01-01T00:00:00Z",
      reason: "B",
      observedGeneration: 2,
    });
    const flipped = mergeConditions(
      sameStatus,
      [{ type: "Ready", status: "True", reason: "Ready", message: "" }],
      2,
      t1,
    );
    expect(flipped[0]!.lastTransitionTime).toBe("2030-01-01T00:05:00Z");
  });
});

describe("invalidSpecStatus", () => {
  const t0 = new Date("2030-01-01T00:00:00Z");
  const t1 = new Date("2030-01-01T00:05:00Z");
  const running = desiredStatus(model, ok, all, t0);

  it("sets Ready=False/InvalidSpec for this generation and keeps what it did not evaluate", () => {
    const s = invalidSpecStatus(running, 4, "spec.bundle.url: bad", t1);
    expect(s.observedGeneration).toBe(4);
    expect(s.conditions![0]).toEqual({
      type: "Ready",
      status: "False",
      reason: "InvalidSpec",
      message: "spec.bundle.url: bad",
      observedGeneration: 4,
      lastTransitionTime: "2030-01-01T00:05:00Z",
    });
    // The other conditions still describe the generation they were computed for.
    expect(s.conditions!.slice(1)).toEqual(running.conditions!.slice(1));
    expect(s.bundleDigest).toBe(running.bundleDigest);
    expect(s.devices).toEqual(running.devices);
  });

  it("is stable: the same error again changes nothing, another message keeps the transition time", () => {
    const first = invalidSpecStatus(undefined, 1, "spec.x: bad", t0);
    expect(first.conditions!.map((c) => c.type)).toEqual(["Ready"]);
    expect(sameStatus(first, invalidSpecStatus(first, 1, "spec.x: bad", t1))).toBe(true);
    const other = invalidSpecStatus(first, 2, "spec.y: bad", t1);
    expect(other.conditions![0]).toMatchObject({
      message: "spec.y: bad",
      observedGeneration: 2,
      lastTransitionTime: "2030-01-01T00:00:00Z",
    });
  });
});
