/**
 * The server tier: a worker pool behind MQTT (Device&Server configuration) and behind the Open
 * Inference Protocol v2 over HTTP (Server Only configuration: every stage on the server).
 */
import type { Logger } from "pino";
import { type RunningTier, startStageTier } from "../core/runtime/stage-tier.js";
import { makeLogger } from "../core/runtime/tier.js";
import type { ServerConfig } from "./config.js";
import { inferencePlugin } from "./oip.js";

export type RunningServer = RunningTier;

export function startServer(
  config: ServerConfig,
  log: Logger = makeLogger(config.logLevel, "server"),
): Promise<RunningServer> {
  return startStageTier(
    config,
    {
      tier: "server",
      // By default the server runs every stage after the device's first one.
      defaultRange: (k) => [Math.min(1, k - 1), k - 1],
      // Workers open every stage: MQTT requests start at the range, Server Only requests at 0.
      open: (_range, k) => Array.from({ length: k }, (_, i) => i),
      plugins: (ctx) => [inferencePlugin(ctx)],
    },
    log,
  );
}
