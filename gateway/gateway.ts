/**
 * The edge tier: runs the middle stage(s) of the bundle on a worker pool; a confident exit answers
 * the device directly, anything else goes on to the next stage's topic with the original replyTo,
 * so the server's answer still goes straight to the device.
 */
import type { Logger } from "pino";
import { z } from "zod";
import { type FieldTable, intField } from "../core/config.js";
import { type RunningTier, startStageTier } from "../core/runtime/stage-tier.js";
import {
  commonFields,
  commonSchema,
  encodingFields,
  encodingSchema,
  makeLogger,
} from "../core/runtime/tier.js";

export const gatewayFields = {
  ...commonFields,
  ...encodingFields,
  workers: { type: "string", help: "inference worker threads (default 1)" },
  maxBatch: { type: "string", help: "largest micro-batch (default 16)" },
  maxDelayMs: {
    type: "string",
    help: "longest wait to fill a batch, ms, fractions allowed (default 0: batches form from what queues while the workers are busy)",
  },
  maxQueue: { type: "string", help: "requests that may wait before overloaded (default 512)" },
  maxFrameBytes: {
    type: "string",
    help: "largest request frame accepted, bytes (default 4194304)",
  },
} satisfies FieldTable;

export const gatewaySchema = z.object({
  ...commonSchema,
  ...encodingSchema,
  workers: intField(1, 64).default(1),
  maxBatch: intField(1, 4096).default(16),
  maxDelayMs: z.coerce.number().min(0, "must be >= 0").max(1000, "must be at most 1000").default(0),
  maxQueue: intField(1, 1_000_000).default(512),
  maxFrameBytes: intField(64, 256 * 1024 * 1024).default(4 * 1024 * 1024),
});

export type GatewayConfig = z.infer<typeof gatewaySchema>;

export type RunningGateway = RunningTier;

export function startGateway(
  config: GatewayConfig,
  log: Logger = makeLogger(config.logLevel, "edge"),
): Promise<RunningGateway> {
  return startStageTier(
    config,
    {
      tier: "edge",
      defaultRange: (k) => {
        if (k < 3)
          throw new RangeError(
            `a ${k}-stage bundle has no middle stage for a gateway; pass --stages`,
          );
        return [1, k - 2];
      },
    },
    log,
  );
}
