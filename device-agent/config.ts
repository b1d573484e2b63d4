import { hostname } from "node:os";
import { z } from "zod";
import {
  boolField,
  type ConfigOf,
  encodingFields,
  field,
  intField,
  msField,
  program,
  tierFields,
} from "../core/config.js";
import { isTopicName } from "../core/wire/frame.js";

export const sources = ["http", "replay", "mqtt"] as const;

/** Where the device DaemonSet mounts the agent's projected token (audience ddnn-broker). */
export const IDENTITY_TOKEN_PATH = "/var/run/secrets/ddnn/token";

/** `ddnn agent`: every flag, environment variable, file key and default it has. */
export const agentConfig = program(
  {
    ...tierFields,
    stages: tierFields.stages.with({ defaultText: "the first stage" }),
    ...encodingFields,
    deviceId: field(
      z
        .string()
        .regex(/^[^/+#\s]+$/, "must not contain / + # or spaces")
        .refine(isTopicName, "must not contain control characters (it names the reply topic)")
        .default(() => hostname()),
      {
        help: "this device's id: reply topic and request ids",
        value: "ID",
        defaultText: "the host name",
      },
    ),
    deadlineMs: field(intField(1, 600_000).default(250), {
      help: "how long to wait for upstream before answering locally, ms",
      value: "MS",
    }),
    source: field(z.array(z.enum(sources)).default(["http"]), {
      multiple: true,
      help: "inputs: http, replay, mqtt",
      value: "NAME",
    }),
    replayImages: field(z.string().min(1).optional(), {
      // The operator's name for it since the first release; the flag follows the field.
      env: "DDNN_REPLAY_PATH",
      help: "idx images to replay (needed with --source replay)",
      value: "PATH",
    }),
    replayLabels: field(z.string().min(1).optional(), {
      help: "idx labels for the replayed images (optional; enables accuracy counters)",
      value: "PATH",
    }),
    fps: field(z.coerce.number().positive("must be > 0").max(100_000).default(10), {
      help: "replay rate, images per second",
      value: "N",
    }),
    loop: field(boolField.default(false), {
      help: "replay again from the start at the end",
      value: "BOOL",
    }),
    inputTopic: field(z.string().optional(), {
      help: "MQTT topic with images (source mqtt)",
      value: "TOPIC",
      defaultText: "ddnn/<ns>/<model>/input/<device id>",
    }),
    deviceSlowdown: field(
      z.coerce
        .number()
        .min(1, "must be at least 1")
        .max(100_000, "must be at most 100000")
        .default(1),
      {
        help: "make the device stage this many times slower by busy computation (stands in for a slow board)",
        value: "X",
      },
    ),
    view: field(intField(0, 63).optional(), {
      help: "multi-view bundle: the view this device sees (its index in ddnn.json views.devices); required with such a bundle",
      value: "V",
    }),
    captureSlotMs: field(msField(1, 3_600_000).default(100), {
      help: "multi-view bundle: a capture given no id is named by its capture time (a clock the devices share) in slots this long, ms",
      value: "MS",
    }),
    identityUrl: field(z.string().min(1).optional(), {
      help: "in-cluster device with broker auth: the operator endpoint that exchanges this Pod's projected ServiceAccount token for its node's broker identity (docs/security.md); needs --model",
      value: "URL",
    }),
    identityToken: field(z.string().min(1).optional(), {
      help: "the projected ServiceAccount token (audience ddnn-broker) sent to --identity-url",
      value: "PATH",
      defaultText: IDENTITY_TOKEN_PATH,
    }),
    identityCa: field(z.string().min(1).optional(), {
      help: "PEM file of the CA that signs an https:// --identity-url's certificate",
      value: "PATH",
      defaultText: "Node's bundled CAs",
    }),
    alarm: field(z.array(z.string()).default([]), {
      multiple: true,
      help: "labels (names or indices) that publish an alarm event",
      value: "LABEL",
    }),
  },
  (schema) =>
    schema
      .refine((c) => !c.source.includes("replay") || c.replayImages !== undefined, {
        path: ["replayImages"],
        message: "is required with --source replay",
      })
      .refine((c) => c.identityUrl === undefined || c.model !== undefined, {
        path: ["model"],
        message: "is required with --identity-url (the DDNNModel whose identity it asks for)",
      })
      .refine(
        (c) =>
          c.identityUrl === undefined ||
          (c.brokerUsername === undefined && c.brokerPassword === undefined),
        {
          path: ["identityUrl"],
          message:
            "takes the place of DDNN_BROKER_USERNAME and DDNN_BROKER_PASSWORD: give one or the other",
        },
      ),
);

export const agentFields = agentConfig.fields;
export const agentSchema = agentConfig.schema;
export type AgentConfig = ConfigOf<typeof agentConfig>;
