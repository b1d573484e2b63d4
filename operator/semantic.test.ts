import { describe, expect, it } from "vitest";
import { APPLIED_HASH_ANNOTATION } from "./builders.js";
import type { KubeObject } from "./kube.js";
import { canonicalJson, contains, isApplied, parseQuantity, withAppliedHash } from "./semantic.js";

const desired: KubeObject = withAppliedHash({
  apiVersion: "apps/v1",
  kind: "Deployment",
  metadata: { name: "x", namespace: "fog", labels: { a: "1" } },
  spec: {
    replicas: 2,
    template: {
      spec: {
        containers: [
          { name: "c", resources: { requests: { cpu: "0.5", memory: "1Gi" } }, env: [] },
        ],
        tolerations: [],
      },
    },
  },
});

/** What the API server gives back: defaults added, empty lists dropped, quantities canonical. */
const live = () => ({
  apiVersion: "apps/v1",
  kind: "Deployment",
  metadata: {
    name: "x",
    namespace: "fog",
    uid: "u",
    resourceVersion: "7",
    labels: { a: "1" },
    annotations: { ...desired.metadata!.annotations },
  },
  spec: {
    replicas: 2,
    revisionHistoryLimit: 10,
    template: {
      spec: {
        containers: [
          {
            name: "c",
            resources: { requests: { cpu: "500m", memory: "1Gi" } },
            imagePullPolicy: "IfNotPresent",
          },
        ],
        restartPolicy: "Always",
      },
    },
  },
  status: { replicas: 2 },
});

describe("isApplied", () => {
  it("sees an object the API server defaulted and normalized as applied", () => {
    expect(isApplied(live(), desired)).toBe(true);
  });
  it("sees a hand edit of a field we set", () => {
    const l = live();
    l.spec.replicas = 5;
    expect(isApplied(l, desired)).toBe(false);
  });
  it("sees a spec change that only removes a field (the hash differs)", () => {
    const smaller = withAppliedHash({ ...desired, metadata: { name: "x", namespace: "fog" } });
    expect(isApplied(live(), smaller)).toBe(false);
  });
  it("applies what does not exist or lacks the annotation", () => {
    expect(isApplied(undefined, desired)).toBe(false);
    const l = live();
    delete (l.metadata.annotations as Record<string, string>)[APPLIED_HASH_ANNOTATION];
    expect(isApplied(l, desired)).toBe(false);
  });
});

describe("contains", () => {
  it("treats zero values as absent, and compares lists by position", () => {
    expect(contains({}, { a: [], b: {}, c: "", d: 0, e: false }, [])).toBe(true);
    expect(contains({ a: 1 }, { a: 0 }, [])).toBe(false);
    expect(contains({ l: [1, 2] }, { l: [1] }, [])).toBe(false);
    expect(contains({ l: [{ a: 1, b: 2 }] }, { l: [{ a: 1 }] }, [])).toBe(true);
  });
});

describe("parseQuantity", () => {
  it.each([
    ["500m", 0.5],
    ["0.5", 0.5],
    ["1Gi", 2 ** 30],
    ["1G", 1e9],
    ["2", 2],
    ["1e3", 1000],
    ["100Ki", 102400],
  ])("%s = %d", (q, v) => {
    expect(parseQuantity(q)).toBe(v);
  });
  it("rejects what is not a quantity", () => {
    expect(parseQuantity("lots")).toBeUndefined();
    expect(parseQuantity("1Xi")).toBeUndefined();
  });
});

describe("canonicalJson", () => {
  it("does not depend on key order", () => {
    expect(canonicalJson({ b: 1, a: { d: 2, c: [3] } })).toBe(
      canonicalJson({ a: { c: [3], d: 2 }, b: 1 }),
    );
  });
});
