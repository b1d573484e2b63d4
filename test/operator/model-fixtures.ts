import type { BuildInput } from "../../operator/builders.js";
import { type BundleFacts, planTiers } from "../../operator/placement.js";
import {
  type DDNNModel,
  type DDNNModelSpecInput,
  ddnnModelSpecSchema,
} from "../../operator/spec.js";
import { testBrokerCa, testBrokerKey } from "../support/broker-ca.js";

/** A parsed DDNNModel from a spec literal, for unit tests of the pure parts. */
export function modelOf(spec: DDNNModelSpecInput, name = "demo", namespace = "fog"): DDNNModel {
  return {
    apiVersion: "fog.ddnn.io/v1alpha1",
    kind: "DDNNModel",
    metadata: { name, namespace, uid: "uid-1234", generation: 3 },
    spec: ddnnModelSpecSchema.parse(spec),
    status: {},
  };
}

export const DIGEST = "ab".repeat(32);

export const THREE_STAGES: BundleFacts = {
  digest: DIGEST,
  name: "demo-3stage",
  version: "1.0.0",
  stages: ["device", "edge", "server"],
  exits: ["device", "edge"],
};

export const exampleSpec = (): DDNNModelSpecInput => ({
  bundle: { url: "http://models.fog.svc/demo.tar.gz", sha256: DIGEST },
  placement: { device: "device", edge: "edge", server: "server" },
  exits: { device: 0.4, edge: 0.3 },
  deadlineMs: 250,
  tiers: {
    device: {
      nodeSelector: { "fog.ddnn.io/device": "true" },
      tolerations: [{ key: "fog.ddnn.io/device", operator: "Exists", effect: "NoSchedule" }],
      source: { http: { port: 8080 } },
    },
    edge: { replicas: 1, nodeSelector: { "fog.ddnn.io/edge": "true" } },
    server: {
      replicas: 2,
      batching: { maxBatch: 32, maxDelayMs: 2 },
      resources: { requests: { cpu: "250m", memory: "256Mi" } },
    },
  },
  broker: { managed: { kind: "mosquitto" } },
});

/** A multi-view bundle like models/fashion-views3: three views' device stages, then the server. */
export const THREE_VIEWS: BundleFacts = {
  digest: DIGEST,
  name: "fashion-views3",
  version: "1.0.0",
  stages: ["device", "server"],
  exits: ["device"],
  views: 3,
};

/** A DDNNModel for THREE_VIEWS: each view on the nodes labelled fog.ddnn.io/view=<v>. */
export const viewsSpec = (): DDNNModelSpecInput => ({
  bundle: { url: "http://models.fog.svc/fashion-views3.tar.gz", sha256: DIGEST },
  placement: { device: "device", server: "server" },
  tiers: { device: { views: [{ view: 0 }, { view: 1 }, { view: 2 }] } },
});

/** The identity endpoint's URL as the chart sets it. */
export const IDENTITY_URL = "https://ddnn-fog-identity.ddnn-system.svc:8444";

/**
 * What the chart's operator gives the builders (docs/security.md): its broker key and CA, the
 * device identity endpoint, and the cluster's nodes (`nodes`, each labelled for the device tier
 * and for `views` views).
 */
export function chartOperator(nodes: readonly string[] = ["board-a"], views = 0) {
  return {
    brokerKey: testBrokerKey,
    brokerCa: testBrokerCa,
    deviceIdentity: { url: IDENTITY_URL, caPem: "PEM" },
    nodes: nodes.map((name, i) => ({
      name,
      labels: {
        "kubernetes.io/hostname": name,
        "fog.ddnn.io/device": "true",
        ...(views > 0 ? { "fog.ddnn.io/view": String(i % views) } : {}),
      },
    })),
    now: new Date("2026-12-01T00:00:00Z"),
  };
}

/** The builders' input for a spec and bundle, from the chart's operator (chartOperator). */
export function buildInput(
  spec: DDNNModelSpecInput,
  facts: BundleFacts,
  operator: Partial<BuildInput> = chartOperator(),
  name = "demo",
): BuildInput {
  const model = modelOf(spec, name);
  const plan = planTiers(model.spec, facts);
  if (!plan.ok) throw new Error(plan.message);
  return {
    model,
    bundle: facts,
    plan: plan.plan,
    images: { image: "ddnn-fog:9.9.9", brokerImage: "eclipse-mosquitto:2" },
    ...operator,
  };
}
