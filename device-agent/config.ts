import { hostname } from "node:os";
import { z } from "zod";
import { boolField, type FieldTable, intField } from "../core/config.js";
import {
  commonFields,
  commonSchema,
  encodingFields,
  encodingSchema,
} from "../core/runtime/tier.js";
import { isTopicName } from "../core/wire/frame.js";

export const agentFields = {
  ...commonFields,
  ...encodingFields,
  deviceId: {
    type: "string",
    help: "this device's id: reply topic and request ids (default: host name)",
  },
  deadlineMs: {
    type: "string",
    help: "how long to wait for upstream before answering locally, ms (default 250)",
  },
  source: {
    type: "string",
    multiple: true,
    help: "inputs: http, replay, mqtt (default http; repeatable)",
  },
  replayImages: {
    type: "string",
    env: "DDNN_REPLAY_PATH",
    help: "idx images to replay (source replay)",
  },
  replayLabels: {
    type: "string",
    help: "idx labels for the replayed images (optional; enables accuracy counters)",
  },
  fps: { type: "string", help: "replay rate, images per second (default 10)" },
  loop: { type: "string", help: "replay again from the start at the end (default false)" },
  inputTopic: {
    type: "string",
    help: "MQTT topic with images (source mqtt; default ddnn/<ns>/<model>/input/<device id>)",
  },
  alarm: {
    type: "string",
    multiple: true,
    help: "labels (names or indices) that publish an alarm event (repeatable)",
  },
} satisfies FieldTable;

export const agentSchema = z.object({
  ...commonSchema,
  ...encodingSchema,
  deviceId: z
    .string()
    .regex(/^[^/+#\s]+$/, "must not contain / + # or spaces")
    .refine(isTopicName, "must not contain control characters (it names the reply topic)")
    .default(() => hostname()),
  deadlineMs: intField(1, 600_000).default(250),
  source: z.array(z.enum(["http", "replay", "mqtt"])).default(["http"]),
  replayImages: z.string().optional(),
  replayLabels: z.string().optional(),
  fps: z.coerce.number().positive("must be > 0").max(100_000).default(10),
  loop: boolField.default(false),
  inputTopic: z.string().optional(),
  alarm: z.array(z.string()).default([]),
});

export type AgentConfig = z.infer<typeof agentSchema>;
