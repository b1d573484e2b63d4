import { Counter, Gauge, Histogram, Registry } from "prom-client";

/** The operator's Prometheus metrics, on its own registry (served at /metrics). */
export class OperatorMetrics {
  readonly registry = new Registry();
  readonly reconciles = new Counter({
    name: "ddnn_operator_reconcile_total",
    help: "Reconciles of DDNNModel objects by result (success, requeue, error)",
    labelNames: ["result"] as const,
    registers: [this.registry],
  });
  readonly reconcileSeconds = new Histogram({
    name: "ddnn_operator_reconcile_duration_seconds",
    help: "Time of one reconcile of a DDNNModel",
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly queueDepth = new Gauge({
    name: "ddnn_operator_queue_depth",
    help: "DDNNModel keys waiting in the work queue",
    registers: [this.registry],
  });
  readonly leader = new Gauge({
    name: "ddnn_operator_leader",
    help: "1 while this replica holds the leader lease (only the leader writes), else 0",
    registers: [this.registry],
  });
  readonly apiRequests = new Counter({
    name: "ddnn_operator_api_requests_total",
    help: "Requests to the Kubernetes API server by verb and HTTP status code (0: no answer)",
    labelNames: ["verb", "code"] as const,
    registers: [this.registry],
  });
  readonly watchRestarts = new Counter({
    name: "ddnn_operator_watch_restarts_total",
    help: "Watches resumed or relisted, by resource and reason (closed, silent, gone, error)",
    labelNames: ["resource", "reason"] as const,
    registers: [this.registry],
  });
  readonly deviceIdentities = new Counter({
    name: "ddnn_operator_device_identities_total",
    help: "Device agents' token exchanges (docs/security.md) by result: issued, refused (a 4xx: bad token, not a device agent), error (the API server could not answer)",
    labelNames: ["result"] as const,
    registers: [this.registry],
  });
}
