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
