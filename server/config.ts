import { z } from "zod";
import type { FieldTable } from "../core/config.js";
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
} satisfies FieldTable;

export const serverSchema = z.object({ ...commonSchema, ...encodingSchema, ...poolSchema(pool) });

export type ServerConfig = z.infer<typeof serverSchema>;
