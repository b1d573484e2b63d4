/**
 * `ddnn gateway`'s configuration, apart from its runtime so the operator can name the Pod
 * environment it writes (operator/builders.ts) without importing the gateway.
 */
import { z } from "zod";
import {
  type ConfigOf,
  encodingFields,
  field,
  intField,
  msField,
  type PoolDefaults,
  poolFields,
  program,
  tierFields,
} from "../core/config.js";

const pool: PoolDefaults = { workers: 1, maxBatch: 16, maxQueue: 512 };

/** `ddnn gateway`: every flag, environment variable, file key and default it has. */
export const gatewayConfig = program({
  ...tierFields,
  stages: tierFields.stages.with({ defaultText: "the middle stages (all but the first and last)" }),
  ...encodingFields,
  ...poolFields(pool),
  fusionWindowMs: field(msField(0, 60_000).default(50), {
    help: "multi-view bundle: how long to wait for the rest of a capture's views after its first, ms",
    value: "MS",
  }),
  recentCaptures: field(intField(1, 1_000_000).default(4096), {
    help: "multi-view bundle: answered captures remembered for views that come late",
    value: "N",
  }),
  alarm: field(z.array(z.string()).default([]), {
    multiple: true,
    help: "multi-view bundle: labels (names or indices) that publish one alarm event per capture",
    value: "LABEL",
  }),
});

export const gatewayFields = gatewayConfig.fields;
export const gatewaySchema = gatewayConfig.schema;
export type GatewayConfig = ConfigOf<typeof gatewayConfig>;
