import { z } from "zod";
import { type FieldTable, intField } from "../core/config.js";
import {
  commonFields,
  commonSchema,
  encodingFields,
  encodingSchema,
} from "../core/runtime/tier.js";

export const serverFields = {
  ...commonFields,
  ...encodingFields,
  workers: { type: "string", help: "inference worker threads (default 2)" },
  maxBatch: { type: "string", help: "largest micro-batch (default 32)" },
  maxDelayMs: {
    type: "string",
    help: "longest wait to fill a batch, ms, fractions allowed (default 0: batches form from what queues while the workers are busy)",
  },
  maxQueue: {
    type: "string",
    help: "requests that may wait; beyond this they are answered overloaded (default 1024)",
  },
  maxFrameBytes: {
    type: "string",
    help: "largest request frame accepted, bytes (default 4194304)",
  },
} satisfies FieldTable;

export const serverSchema = z.object({
  ...commonSchema,
  ...encodingSchema,
  workers: intField(1, 64).default(2),
  maxBatch: intField(1, 4096).default(32),
  maxDelayMs: z.coerce.number().min(0, "must be >= 0").max(1000, "must be at most 1000").default(0),
  maxQueue: intField(1, 1_000_000).default(1024),
  maxFrameBytes: intField(64, 256 * 1024 * 1024).default(4 * 1024 * 1024),
});

export type ServerConfig = z.infer<typeof serverSchema>;
