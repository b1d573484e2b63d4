import type { BundleFacts } from "../../operator/placement.js";
import {
  type DDNNModel,
  type DDNNModelSpecInput,
  ddnnModelSpecSchema,
} from "../../operator/spec.js";

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
