import type { KubeClient } from "./kube.js";
import { microTime } from "./leader.js";
import type { DDNNModel } from "./spec.js";

/**
 * Kubernetes Events on the DDNNModel for what the operator did and what went wrong, so
 * `kubectl describe ddnn NAME` tells the story. An Event that cannot be written is logged and
 * dropped: it must never fail a reconcile.
 */
export class EventRecorder {
  constructor(
    private readonly client: KubeClient,
    private readonly instance: string,
    private readonly onError: (err: unknown) => void = () => {},
  ) {}

  async record(
    model: DDNNModel,
    type: "Normal" | "Warning",
    reason: string,
    message: string,
  ): Promise<void> {
    const now = new Date();
    try {
      await this.client.create(
        { apiVersion: "v1", plural: "events", namespace: model.metadata.namespace },
        {
          apiVersion: "v1",
          kind: "Event",
          metadata: {
            generateName: `${model.metadata.name}.`,
            namespace: model.metadata.namespace,
          },
          involvedObject: {
            apiVersion: model.apiVersion,
            kind: model.kind,
            name: model.metadata.name,
            namespace: model.metadata.namespace,
            uid: model.metadata.uid,
            resourceVersion: model.metadata.resourceVersion,
          },
          type,
          reason,
          message: message.slice(0, 1024),
          source: { component: "ddnn-operator" },
          reportingComponent: "fog.ddnn.io/ddnn-operator",
          reportingInstance: this.instance.slice(0, 128),
          action: reason,
          firstTimestamp: now.toISOString().replace(/\.\d{3}Z$/, "Z"),
          lastTimestamp: now.toISOString().replace(/\.\d{3}Z$/, "Z"),
          eventTime: microTime(now),
          count: 1,
        },
      );
    } catch (err) {
      this.onError(err);
    }
  }
}
