/**
 * The flags of the benchmarks that time one request at a time in interleaved rounds (offload-rtt,
 * agent): how many requests, rounds and warm-up requests, the features' wire encoding, and a time
 * limit for the whole run.
 */
import type { Compression, WireDtype } from "../../core/wire/frame.js";

/** parseArgs options; `requests` is the default per row and round. */
export function roundOptions(requests: number, rounds: number) {
  return {
    bundle: { type: "string" },
    requests: { type: "string", default: String(requests) },
    rounds: { type: "string", default: String(rounds) },
    warmup: { type: "string", default: "300" },
    dtype: { type: "string", default: "u8q" },
    compression: { type: "string", default: "deflate" },
    "time-limit-s": { type: "string", default: "240" },
  } as const;
}

/** The settings those flags give. */
export function roundSettings(values: {
  requests: string;
  rounds: string;
  warmup: string;
  dtype: string;
  compression: string;
  "time-limit-s": string;
}) {
  return {
    requests: Number(values.requests),
    rounds: Number(values.rounds),
    warmup: Number(values.warmup),
    encoding: { dtype: values.dtype as WireDtype, compression: values.compression as Compression },
    /** Date.now() past which no more requests are sent. */
    deadlineAt: Date.now() + Number(values["time-limit-s"]) * 1000,
  };
}
