/** Prometheus metric names shared by every tier (prefix ddnn_). Each program makes its own registry. */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

const latencyBuckets = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
];

export function tierMetrics(tier: string, model: string) {
  const registry = new Registry();
  registry.setDefaultLabels({ tier, model });
  collectDefaultMetrics({ register: registry });
  // Read at every scrape, so the gauge is the queue as it is now, not as the last answer left it.
  let queued: () => number = () => 0;
  return {
    registry,
    /** Where ddnn_queue_depth is read from (the tier's worker pool). */
    watchQueue(source: () => number): void {
      queued = source;
    },
    requests: new Counter({
      name: "ddnn_requests_total",
      help: "Inference requests handled, by stage that answered or forwarded and outcome",
      labelNames: ["stage", "outcome"] as const,
      registers: [registry],
    }),
    exits: new Counter({
      name: "ddnn_exits_total",
      help: "Samples answered by this tier's own exits, by stage (summed over tiers: every answer once)",
      labelNames: ["stage"] as const,
      registers: [registry],
    }),
    stageSeconds: new Histogram({
      name: "ddnn_stage_seconds",
      help: "Compute time per sample of a stage (batch time divided by batch size)",
      labelNames: ["stage"] as const,
      buckets: latencyBuckets,
      registers: [registry],
    }),
    requestSeconds: new Histogram({
      name: "ddnn_request_seconds",
      help: "Time from receiving a request to publishing its answer or forwarding it",
      buckets: latencyBuckets,
      registers: [registry],
    }),
    batchSize: new Histogram({
      name: "ddnn_batch_size",
      help: "Samples per inference batch the workers ran (MQTT and HTTP), one observation per batch",
      buckets: [1, 2, 4, 8, 16, 32, 64, 128],
      registers: [registry],
    }),
    queueDepth: new Gauge({
      name: "ddnn_queue_depth",
      help: "Requests waiting for a worker",
      registers: [registry],
      collect() {
        this.set(queued());
      },
    }),
    framesDropped: new Counter({
      name: "ddnn_frames_dropped_total",
      help: "Frames that could not be answered (no readable id or replyTo), by reason",
      labelNames: ["reason"] as const,
      registers: [registry],
    }),
    offloads: new Counter({
      name: "ddnn_offloads_total",
      help: "Requests sent upstream, by outcome",
      labelNames: ["outcome"] as const,
      registers: [registry],
    }),
    offloadBytes: new Counter({
      name: "ddnn_offload_bytes_total",
      help: "Bytes of request frames sent upstream",
      registers: [registry],
    }),
    degraded: new Counter({
      name: "ddnn_degraded_total",
      help: "Answers given by the local exit because upstream did not answer, by reason",
      labelNames: ["reason"] as const,
      registers: [registry],
    }),
    workerRestarts: new Counter({
      name: "ddnn_worker_restarts_total",
      help: "Inference worker threads that died and were replaced",
      registers: [registry],
    }),
    brokerConnected: new Gauge({
      name: "ddnn_broker_connected",
      help: "1 while the MQTT connection is up",
      registers: [registry],
    }),
  };
}

export type TierMetrics = ReturnType<typeof tierMetrics>;
