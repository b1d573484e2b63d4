import { z } from "zod";
import { boolField, type FieldTable } from "../core/config.js";
import {
  commonFields,
  commonSchema,
  encodingFields,
  encodingSchema,
  type PoolDefaults,
  poolFields,
  poolSchema,
} from "../core/runtime/tier.js";

const pool: PoolDefaults = { workers: 2, maxBatch: 32, maxQueue: 1024 };

export const serverFields = {
  ...commonFields,
  ...encodingFields,
  ...poolFields(pool),
  fullModel: {
    type: "string",
    help: "also open the stages before --stages, so POST /v2/models/{name}/infer runs the whole model (the Server Only configuration); false opens only this tier's stages (default true)",
  },
} satisfies FieldTable;

export const serverSchema = z.object({
  ...commonSchema,
  ...encodingSchema,
  ...poolSchema(pool),
  fullModel: boolField.default(true),
});

export type ServerConfig = z.infer<typeof serverSchema>;
