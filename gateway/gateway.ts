/**
 * The edge tier: runs the middle stage(s) of the bundle on a worker pool; a confident exit answers
 * the device directly, anything else goes on to the next stage's topic with the original replyTo,
 * so the server's answer still goes straight to the device.
 */
import type { Logger } from "pino";
import { z } from "zod";
import { ConfigError, type FieldTable } from "../core/config.js";
import { type RunningTier, startStageTier } from "../core/runtime/stage-tier.js";
import {
  commonFields,
  commonSchema,
  encodingFields,
  encodingSchema,
  makeLogger,
  type PoolDefaults,
  poolFields,
  poolSchema,
} from "../core/runtime/tier.js";

const pool: PoolDefaults = { workers: 1, maxBatch: 16, maxQueue: 512 };

export const gatewayFields = {
  ...commonFields,
  ...encodingFields,
  ...poolFields(pool),
} satisfies FieldTable;

export const gatewaySchema = z.object({ ...commonSchema, ...encodingSchema, ...poolSchema(pool) });

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
          throw new ConfigError(
            `a ${k}-stage bundle has no middle stage for a gateway; pass --stages`,
          );
        return [1, k - 2];
      },
    },
    log,
  );
}
