/**
 * The edge tier: runs the middle stage(s) of the bundle on a worker pool; a confident exit answers
 * the device directly, anything else goes on to the next stage's topic with the original replyTo,
 * so the server's answer still goes straight to the device.
 */
import type { Logger } from "pino";
import {
  ConfigError,
  type ConfigOf,
  encodingFields,
  type PoolDefaults,
  poolFields,
  program,
  tierFields,
} from "../core/config.js";
import { type RunningTier, startStageTier } from "../core/runtime/stage-tier.js";
import { makeLogger } from "../core/runtime/tier.js";

const pool: PoolDefaults = { workers: 1, maxBatch: 16, maxQueue: 512 };

/** `ddnn gateway`: every flag, environment variable, file key and default it has. */
export const gatewayConfig = program({
  ...tierFields,
  stages: tierFields.stages.with({ defaultText: "the middle stages (all but the first and last)" }),
  ...encodingFields,
  ...poolFields(pool),
});

export const gatewayFields = gatewayConfig.fields;
export const gatewaySchema = gatewayConfig.schema;
export type GatewayConfig = ConfigOf<typeof gatewayConfig>;

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
