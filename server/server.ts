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
      // MQTT requests start at the range; Server Only requests (HTTP) start at stage 0, so the
      // workers open the earlier stages only when the whole model is served.
      open: (range, k) =>
        Array.from({ length: k }, (_, i) => i).filter((i) => i >= range.from || config.fullModel),
      plugins: (ctx) => [inferencePlugin({ ...ctx, fullModel: config.fullModel })],
    },
    log,
  );
}
