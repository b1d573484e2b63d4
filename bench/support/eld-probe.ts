/**
 * Preloaded into a server process with `node --import <this file> dist/cli/main.js server ...`
 * (spawned with an IPC channel): measures the event-loop delay of the process's main thread, the
 * one that runs the MQTT client, with perf_hooks.monitorEventLoopDelay. Nothing in the server
 * changes. Resolution: env DDNN_BENCH_ELD_RESOLUTION_MS (default 10, Node's default and the one
 * prom-client uses for the server's own nodejs_eventloop_lag metrics).
 *
 * monitorEventLoopDelay records the whole interval between two timer callbacks, so its values
 * start at the resolution; readings here subtract it and report the lateness (what "delay" means).
 * The parent measures windows over IPC (an ELD histogram cannot be merged into another, so each
 * window is read on its own):
 *   "eld:start"  forget, start recording    "eld:stop"  stop recording
 *   "eld:read"   answer { type: "eld", ... } for the last window, in ms
 * Without an IPC channel it does nothing.
 */
import { monitorEventLoopDelay } from "node:perf_hooks";

export interface EldReading {
  type: "eld";
  resolutionMs: number;
  count: number;
  /** Lateness of the sampling timer beyond its schedule, ms. */
  meanMs: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
}

const send = process.send?.bind(process);
if (send) {
  const resolutionMs = Number(process.env.DDNN_BENCH_ELD_RESOLUTION_MS ?? 10);
  const histogram = monitorEventLoopDelay({ resolution: resolutionMs });
  const late = (ns: number) => Math.max(0, ns / 1e6 - resolutionMs);
  process.on("message", (msg: unknown) => {
    switch (msg) {
      case "eld:start":
        histogram.disable();
        // reset() also forgets the previous callback's time, so no idle gap counts as a delay.
        histogram.reset();
        histogram.enable();
        break;
      case "eld:stop":
        histogram.disable();
        break;
      case "eld:read": {
        const count = histogram.count;
        const reading: EldReading = {
          type: "eld",
          resolutionMs,
          count,
          meanMs: count ? late(histogram.mean) : Number.NaN,
          p50Ms: count ? late(histogram.percentile(50)) : Number.NaN,
          p99Ms: count ? late(histogram.percentile(99)) : Number.NaN,
          p999Ms: count ? late(histogram.percentile(99.9)) : Number.NaN,
          maxMs: count ? late(histogram.max) : Number.NaN,
        };
        send(reading);
        return;
      }
      default:
        return;
    }
    send({ type: "ack", for: msg });
  });
  // The channel must not keep the server alive once it has shut down.
  process.channel?.unref();
}
