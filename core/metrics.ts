/**
 * Prometheus metric names shared by every tier (prefix ddnn_). Each program makes its own registry;
 * every series carries the registry's `tier` and `model` labels. Labels stay bounded (stage names,
 * error codes, reasons, outcomes): never a request or device id, which would make a series per
 * request. docs/metrics.md describes each metric.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

/** What the gauges of a tier's inference worker pool are read from, at every scrape. */
export interface PoolReadings {
  /** Requests waiting for a worker. */
  readonly queued: number;
  /** Workers able to take a batch. */
  readonly readyWorkers: number;
  /** Seconds the workers have spent running batches since the pool started, summed over workers. */
  readonly busySeconds: number;
}

const latencyBuckets = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
];

/** Why a device's offload did not get an answer (offload-client.ts OffloadFailure, and internal). */
const offloadFailures = ["deadline", "broker_unreachable", "upstream_error", "internal"] as const;

export function tierMetrics(tier: string, model: string) {
  const registry = new Registry();
  registry.setDefaultLabels({ tier, model });
  collectDefaultMetrics({ register: registry });
  // Read at every scrape, so a gauge is the state as it is now, not as the last answer left it.
  let pool: PoolReadings = { queued: 0, readyWorkers: 0, busySeconds: 0 };
  let requestsInFlight: () => number = () => 0;
  let offloadsInFlight: () => number = () => 0;
  const metrics = {
    registry,
    /** Where ddnn_queue_depth, ddnn_workers and ddnn_worker_busy_seconds_total are read from. */
    watchPool(readings: PoolReadings): void {
      pool = readings;
    },
    /** Where ddnn_requests_in_flight is read from (an upstream tier's accepted, unanswered requests). */
    watchRequestsInFlight(source: () => number): void {
      requestsInFlight = source;
    },
    /** Where ddnn_offloads_in_flight is read from (a device's offloads waiting for an answer). */
    watchOffloadsInFlight(source: () => number): void {
      offloadsInFlight = source;
    },
    requests: new Counter({
      name: "ddnn_requests_total",
      help: "Inference requests handled, by the stage that answered or forwarded them and outcome: ok (answered over MQTT), forwarded (sent on to the next stage), ok_http (answered over HTTP, Server Only), probe (a measurement request of ddnn profile, answered or forwarded), or the error code answered",
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
      help: "Time from receiving a request (on a device: a frame) to publishing its answer or forwarding it",
      buckets: latencyBuckets,
      registers: [registry],
    }),
    queueSeconds: new Histogram({
      name: "ddnn_queue_seconds",
      help: "Time a request waited for an inference worker, by the first stage it ran",
      labelNames: ["stage"] as const,
      buckets: latencyBuckets,
      registers: [registry],
    }),
    transitSeconds: new Histogram({
      name: "ddnn_transit_seconds",
      help: "Time from the device sending a request to this tier receiving it (device and tier clocks), by the stage it runs here",
      labelNames: ["stage"] as const,
      buckets: latencyBuckets,
      registers: [registry],
    }),
    offloadSeconds: new Histogram({
      name: "ddnn_offload_seconds",
      help: "Time from a device publishing an offload request to its answer arriving, by the stage it was sent to",
      labelNames: ["stage"] as const,
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
        this.set(pool.queued);
      },
    }),
    workers: new Gauge({
      name: "ddnn_workers",
      help: "Inference worker threads ready to take a batch",
      registers: [registry],
      collect() {
        this.set(pool.readyWorkers);
      },
    }),
    workerBusySeconds: new Counter({
      name: "ddnn_worker_busy_seconds_total",
      help: "Time the inference workers spent running batches, summed over workers (divided by ddnn_workers: utilisation)",
      registers: [registry],
      collect() {
        // The pool keeps the total; a counter only goes up, and so does the pool's sum.
        this.reset();
        this.inc(pool.busySeconds);
      },
    }),
    requestsInFlight: new Gauge({
      name: "ddnn_requests_in_flight",
      help: "Requests taken from MQTT and not yet answered or forwarded",
      registers: [registry],
      collect() {
        this.set(requestsInFlight());
      },
    }),
    offloadsInFlight: new Gauge({
      name: "ddnn_offloads_in_flight",
      help: "Requests a device sent upstream that wait for their answer",
      registers: [registry],
      collect() {
        this.set(offloadsInFlight());
      },
    }),
    errors: new Counter({
      name: "ddnn_errors_total",
      help: "Requests this tier answered with an error (MQTT error replies, dropped frames, HTTP inference), by stage and protocol error code",
      labelNames: ["stage", "code"] as const,
      registers: [registry],
    }),
    refusals: new Counter({
      name: "ddnn_refusals_total",
      help: "Requests answered overloaded, by stage and reason: client_limit (the client already had --max-in-flight-per-client requests in flight), queue_full (--max-queue requests waiting), shutting_down",
      labelNames: ["stage", "reason"] as const,
      registers: [registry],
    }),
    framesDropped: new Counter({
      name: "ddnn_frames_dropped_total",
      help: "Frames that could not be answered (no readable id or replyTo), by reason",
      labelNames: ["reason"] as const,
      registers: [registry],
    }),
    offloads: new Counter({
      name: "ddnn_offloads_total",
      help: "Requests a device sent upstream, by outcome: ok, deadline, broker_unreachable, upstream_error",
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
  if (tier === "device") {
    // Series that exist from the start: rate() and increase() miss the first event of a series
    // that appears with it, and a degraded answer may be the only one in a long while.
    for (const outcome of ["ok", ...offloadFailures]) metrics.offloads.inc({ outcome }, 0);
    for (const reason of offloadFailures) metrics.degraded.inc({ reason }, 0);
  }
  return metrics;
}

export type TierMetrics = ReturnType<typeof tierMetrics>;

/** The gateway's fusion of a multi-view bundle's views (gateway/fusion.ts), on the tier's registry. */
export function fusionMetrics(registry: Registry) {
  const metrics = {
    capturesFused: new Counter({
      name: "ddnn_captures_fused_total",
      help: "Captures the gateway fused, by outcome: complete (every view came within the window) or partial (the window closed with views missing)",
      labelNames: ["outcome"] as const,
      registers: [registry],
    }),
    viewsPerCapture: new Histogram({
      name: "ddnn_views_per_capture",
      help: "Views fused per capture (the views that came before the window closed)",
      buckets: [1, 2, 3, 4, 5, 6, 8],
      registers: [registry],
    }),
    lateViews: new Counter({
      name: "ddnn_late_views_total",
      help: "Views that arrived after their capture was fused; each got the capture's answer",
      registers: [registry],
    }),
    aggregateExits: new Counter({
      name: "ddnn_aggregate_exits_total",
      help: "Captures answered by the local aggregate's exit (the rest went on to the next stage)",
      registers: [registry],
    }),
  };
  for (const outcome of ["complete", "partial"]) metrics.capturesFused.inc({ outcome }, 0);
  return metrics;
}

export type FusionMetrics = ReturnType<typeof fusionMetrics>;
