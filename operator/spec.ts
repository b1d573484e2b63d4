import { z } from "zod";
import { compressions, dtypes } from "../core/wire/frame.js";

/**
 * The DDNNModel resource (Contract 4). This file is the one source of truth: the operator parses
 * objects with these schemas, and scripts/gen-crd.ts turns them into the CRD's OpenAPI schema
 * (crds/fog.ddnn.io_ddnnmodels.yaml), CEL rules included, so the API server refuses what the
 * operator could not run.
 */
export const GROUP = "fog.ddnn.io";
export const VERSION = "v1alpha1";
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = "DDNNModel";
export const PLURAL = "ddnnmodels";
export const SHORT_NAME = "ddnn";

/** The three tiers of the fog, in the order data flows through them. */
export const TIERS = ["device", "edge", "server"] as const;
export type Tier = (typeof TIERS)[number];

/**
 * The node label that says a node serves a tier: `fog.ddnn.io/device`, `fog.ddnn.io/edge`,
 * `fog.ddnn.io/server`, each with the value "true". One label per tier, so one node may serve
 * several (a gateway board that is also a camera, a one-node lab cluster).
 */
export const tierNodeLabel = (tier: Tier): string => `${GROUP}/${tier}`;
/**
 * How long edge and server Pods stay on a node that is unreachable or not ready before they are
 * evicted (Kubernetes gives every Pod 300 s otherwise; the builders add these tolerations unless
 * the tier's own cover the taint). An edge node's uplink and power come and go: the gateway rides
 * out ten minutes of that instead of being restarted elsewhere, with a new bundle download over the
 * same uplink, or left Pending when there is no other edge node; devices answer locally meanwhile.
 * A server node out of touch for a minute is usually gone: its replacement starts after 60 s
 * instead of 300 s, and devices answer degraded until then. Device agents are a DaemonSet, which
 * stays on its node for as long as the node exists.
 */
export const NODE_PROBLEM_TOLERATION_SECONDS = { edge: 600, server: 60 } as const;

const onTierNodes = (tier: Tier): Record<string, string> => ({ [tierNodeLabel(tier)]: "true" });

const DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const DNS_SUBDOMAIN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

interface CelRule {
  rule: string;
  message: string;
  fieldPath?: string;
  reason?:
    | "FieldValueInvalid"
    | "FieldValueRequired"
    | "FieldValueForbidden"
    | "FieldValueDuplicate";
}

/** Attaches CEL rules that the API server checks (they are copied into the CRD as they are). */
function cel<T extends z.ZodType>(schema: T, ...rules: CelRule[]): T {
  const meta = schema.meta() ?? {};
  const existing = (meta["x-kubernetes-validations"] as CelRule[] | undefined) ?? [];
  return schema.meta({ ...meta, "x-kubernetes-validations": [...existing, ...rules] }) as T;
}

/**
 * A string that must match `pattern`: zod checks it with `message`, and the CRD carries the same
 * pattern as a CEL rule with the same message (an OpenAPI `pattern` error only repeats the regex).
 */
function matching(pattern: string, message: string, maxLength: number) {
  return cel(z.string().max(maxLength).regex(new RegExp(pattern), message), {
    rule: `self.matches('${pattern.replaceAll("\\", "\\\\")}')`,
    message,
  });
}

/** A ConfigMap key, which Kubernetes also uses as a file name: not ".", not starting with "..". */
function configMapKey(field: string) {
  const dots = `${field} must not be . or start with .. (Kubernetes refuses such keys)`;
  return cel(
    matching(
      "^[-._a-zA-Z0-9]+$",
      `${field} must be a ConfigMap key (letters, digits, - _ .)`,
      253,
    ).refine((k) => k !== "." && !k.startsWith(".."), dots),
    { rule: "self != '.' && !self.startsWith('..')", message: dots },
  );
}

function described<T extends z.ZodType>(schema: T, description: string): T {
  return schema.meta({ ...(schema.meta() ?? {}), description }) as T;
}

const stageNameMessage = "stage names are lowercase DNS labels (a-z, 0-9, -), as in the bundle";
const tier = described(
  z.enum(TIERS),
  "device (DaemonSet on device nodes), edge (gateway Deployment) or server (server Deployment)",
);
const threshold = z.number().min(0).max(1);

const quantity = described(
  z.union([
    z.number().int(),
    z
      .string()
      .regex(
        /^[+-]?((\d+(\.\d*)?)|(\.\d+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?\d+))?$/,
        "must be a Kubernetes quantity such as 500m, 2, 1Gi",
      ),
  ]),
  "a Kubernetes quantity (500m, 2, 1Gi)",
);
const resources = described(
  z.object({
    limits: z.record(z.string(), quantity).optional(),
    requests: z.record(z.string(), quantity).optional(),
  }),
  "compute resources of the tier's container (as in a Pod)",
);
const toleration = z.object({
  key: z.string().max(316).optional(),
  operator: z.enum(["Exists", "Equal"]).optional(),
  value: z.string().max(63).optional(),
  effect: z.enum(["NoSchedule", "PreferNoSchedule", "NoExecute"]).optional(),
  tolerationSeconds: z.number().int().optional(),
});
const nodeSelector = (defaults: string) =>
  described(
    z.record(z.string(), z.string()),
    `node labels a Pod of this tier needs (as in a Pod's nodeSelector); ${defaults}`,
  );
const tolerations = (defaults: string) =>
  described(
    z.array(toleration).max(32),
    `taints the tier's Pods tolerate (as in a Pod)${defaults}`,
  );
const nodeProblems = (seconds: number) =>
  `; node.kubernetes.io/unreachable and not-ready (NoExecute) are tolerated for ${seconds} s unless a toleration given here covers them`;

const port = z.number().int().min(1).max(65535);

const deviceSource = cel(
  z.object({
    http: described(
      z.object({ port: port.default(8080) }),
      "POST /v1/infer on this port of the node (hostPort)",
    ).optional(),
    mqtt: described(z.object({}), "inputs arrive on the model's MQTT topics").optional(),
    replay: described(
      z.object({ path: z.string().min(1).max(4096) }),
      "replays an idx file found at this path on the node",
    ).optional(),
  }),
  {
    rule: "[has(self.http), has(self.mqtt), has(self.replay)].filter(x, x).size() == 1",
    message: "set exactly one of source.http, source.mqtt and source.replay",
  },
);

const bundleCache = described(
  z.object({
    hostPath: described(
      matching("^/[^\\s]*$", "bundleCache.hostPath must be an absolute path", 4096),
      "a directory of the node (made when missing; writable by UID 65532): the copy outlives the Pod, so a device replaced or rebooted while the network is down starts from it",
    ),
  }),
  "where a device agent keeps the verified bundle it fetched from bundle.url; default an emptyDir of the Pod (kept across container restarts)",
);

/**
 * The node label that says which view of a multi-view bundle a device node sees:
 * `fog.ddnn.io/view: "2"`. A view placed without a nodeSelector of its own runs on the device
 * nodes that carry its index.
 */
export const VIEW_NODE_LABEL = `${GROUP}/view`;
/** The most views a DDNNModel places (the agent's --view is 0..63). */
export const MAX_VIEWS = 64;

const viewsMessages = {
  count:
    "tiers.device.views places every view of a multi-view bundle (2 or more); leave it out for a one-view bundle",
  distinct: "tiers.device.views: each view is placed once",
  range:
    "tiers.device.views: N entries place views 0..N-1, each once (a bundle of K views needs views 0..K-1)",
} as const;

const viewPlacement = z.object({
  view: described(
    z
      .number()
      .int()
      .min(0)
      .max(MAX_VIEWS - 1),
    "the view's index: its place in the bundle's ddnn.json views.devices",
  ),
  nodeSelector: described(
    z.record(z.string(), z.string()),
    `node labels of the nodes that see this view, added to tiers.device.nodeSelector; default ${VIEW_NODE_LABEL}: "<view>"; {} adds none`,
  ).optional(),
  source: described(
    deviceSource,
    "this view's input in place of tiers.device.source (a replay file of its own, another port)",
  ).optional(),
});

const views = cel(
  described(
    z
      .array(viewPlacement)
      .max(MAX_VIEWS)
      .refine((v) => v.length >= 2, viewsMessages.count)
      .refine(
        (v) => v.every((p) => v.filter((q) => q.view === p.view).length === 1),
        viewsMessages.distinct,
      )
      .refine((v) => v.every((p) => p.view < v.length), viewsMessages.range),
    "multi-view bundle (ddnn.json views): which device nodes hold which view; one device DaemonSet per view, each agent started with --view, and the edge gateway fuses the views of every capture",
  ),
  { rule: "self.size() >= 2", message: viewsMessages.count },
  {
    rule: "self.all(p, self.filter(q, q.view == p.view).size() == 1)",
    message: viewsMessages.distinct,
  },
  { rule: "self.all(p, p.view < self.size())", message: viewsMessages.range },
);

const deviceTier = z.object({
  nodeSelector: nodeSelector(
    'default fog.ddnn.io/device: "true" (a node may also carry the edge and server labels)',
  ).default(onTierNodes("device")),
  tolerations: tolerations("").optional(),
  source: deviceSource.default({ http: { port: 8080 } }),
  resources: resources.optional(),
  bundleCache: bundleCache.optional(),
  views: views.optional(),
  captureSlotMs: described(
    z.number().int().min(1).max(3_600_000),
    "multi-view bundle: a capture that comes without an id (HTTP, MQTT) is named by its capture time in slots this long, ms, so the devices' clocks must agree well within it; default the agent's (100)",
  ).optional(),
});
/** What one Pod of a stage tier takes before it answers `overloaded` (issue 11: a flooding device). */
const admission = (queueDefault: number) =>
  z.object({
    maxQueue: described(
      z.number().int().min(1).max(1_000_000),
      `requests that may wait in one Pod; beyond this they are answered overloaded; default ${queueDefault}`,
    ).optional(),
    maxInFlightPerClient: described(
      z.number().int().min(0).max(1_000_000),
      "requests one client (one reply topic: a device, or a gateway for all its devices) may have in flight in one Pod; beyond this they are answered overloaded so a flooding client cannot fill the queue; 0: no limit; default a quarter of maxQueue",
    ).optional(),
  });
const edgeTier = z.object({
  replicas: z.number().int().min(0).max(100).default(1),
  nodeSelector: nodeSelector(
    'default fog.ddnn.io/edge: "true" (a node may also carry the device and server labels); {} runs it on any node',
  ).default(onTierNodes("edge")),
  tolerations: tolerations(nodeProblems(NODE_PROBLEM_TOLERATION_SECONDS.edge)).optional(),
  resources: resources.optional(),
  admission: admission(512).optional(),
  fusionWindowMs: described(
    z.number().int().min(0).max(60_000),
    "multi-view bundle: how long the gateway waits for the rest of a capture's views after its first, ms; default the gateway's (50)",
  ).optional(),
});
const batching = z.object({
  workers: described(z.number().int().min(1).max(64), "inference workers per Pod").optional(),
  maxBatch: described(z.number().int().min(1).max(1024), "most requests run as one batch").default(
    32,
  ),
  maxDelayMs: described(
    z.number().int().min(0).max(1000),
    "longest wait for a batch to fill, in milliseconds",
  ).default(2),
});
const serverTier = z.object({
  replicas: z.number().int().min(0).max(100).default(1),
  batching: batching.default({ maxBatch: 32, maxDelayMs: 2 }),
  admission: admission(1024).optional(),
  nodeSelector: nodeSelector(
    'default none: any node, preferring those labelled fog.ddnn.io/server: "true"',
  ).optional(),
  tolerations: tolerations(nodeProblems(NODE_PROBLEM_TOLERATION_SECONDS.server)).optional(),
  resources: resources.optional(),
});

const bundle = cel(
  z.object({
    url: described(
      matching("^https?://[^\\s]+$", "bundle.url must be an http:// or https:// URL", 2048),
      "where the bundle's .tar.gz is served; every tier fetches it",
    ).optional(),
    configMap: described(
      z.object({
        name: matching(DNS_SUBDOMAIN, "configMap.name must be a ConfigMap name", 253),
        key: configMapKey("configMap.key").default("bundle.tar.gz"),
      }),
      "a ConfigMap in the model's namespace whose binaryData holds the .tar.gz (under 1 MiB)",
    ).optional(),
    sha256: described(
      matching(
        "^[0-9a-f]{64}$",
        "bundle.sha256 must be 64 lowercase hex characters: the sha256 of the bundle's ddnn.json",
        64,
      ),
      "sha256 (hex) of the bundle's ddnn.json; it pins every stage file",
    ),
  }),
  {
    rule: "has(self.url) != has(self.configMap)",
    message: "set exactly one of bundle.url and bundle.configMap",
  },
);

const INSECURE_MESSAGE =
  "broker.managed.insecure: true turns TLS and auth off: leave tls and auth unset with it";

const secretRef = z.object({
  name: matching(DNS_SUBDOMAIN, "secretRef.name must be a Secret name", 253),
  usernameKey: z.string().min(1).max(253).default("username"),
  passwordKey: z.string().min(1).max(253).default("password"),
});

const broker = cel(
  z.object({
    managed: described(
      cel(
        z
          .object({
            kind: z.enum(["mosquitto"]).default("mosquitto"),
            image: described(
              z.string().min(1).max(512),
              "overrides the operator's broker image",
            ).optional(),
            resources: resources.optional(),
            insecure: described(
              z.boolean(),
              "true: the broker takes anonymous plaintext clients on 1883 (a lab; the tier Pods say DDNN_INSECURE=true); with it, tls and auth stay unset. Default false: TLS and auth are on (docs/security.md)",
            ).optional(),
            tls: described(
              z.object({
                secretName: matching(DNS_SUBDOMAIN, "tls.secretName must be a Secret name", 253),
              }),
              "a Secret in the model's namespace with tls.crt, tls.key and ca.crt (what a cert-manager Certificate writes) instead of the certificate the operator issues (Secret <model>-broker-cert, from the chart's broker CA); the broker listens with TLS on 8883 only, and every tier verifies its certificate against ca.crt; the certificate must name <model>-broker.<namespace>.svc",
            ).optional(),
            auth: described(
              z.object({
                devices: described(
                  z
                    .array(matching(DNS_SUBDOMAIN, "auth.devices entries must be DNS names", 253))
                    .max(1000),
                  "ids of devices outside the cluster (boards running a generated C device program) that get their own identity; their user names and passwords are in the Secret <model>-broker-credentials",
                ).optional(),
              }),
              "the broker refuses anonymous clients (always, unless insecure): every client has its own identity (the operator derives the passwords and writes a Mosquitto password file and ACL), and may use only the topics of its tier (docs/security.md); devices names boards outside the cluster",
            ).optional(),
          })
          .refine((m) => !m.insecure || (!m.tls && !m.auth), {
            path: ["insecure"],
            message: INSECURE_MESSAGE,
          }),
        {
          rule: "!has(self.insecure) || !self.insecure || (!has(self.tls) && !has(self.auth))",
          message: INSECURE_MESSAGE,
        },
      ),
      "the operator runs a Mosquitto 2 broker for this model: with TLS and an identity per client unless insecure",
    ).optional(),
    external: described(
      cel(
        z.object({
          url: matching(
            // The tiers speak MQTT over TCP or TLS; user:pass@ would put the password in every Pod spec.
            "^(mqtts?|tcp)://[^\\s@/]+(/[^\\s]*)?$",
            "broker.external.url must be mqtt://host:port or mqtts://host:port, without credentials (they go in secretRef)",
            2048,
          ),
          secretRef: described(
            secretRef,
            "Secret with the broker's username and password; Pods read it, the operator does not",
          ).optional(),
          caConfigMap: described(
            z.object({
              name: matching(DNS_SUBDOMAIN, "caConfigMap.name must be a ConfigMap name", 253),
              key: configMapKey("caConfigMap.key").default("ca.crt"),
            }),
            "a ConfigMap in the model's namespace holding the PEM CA(s) that sign an mqtts:// broker's certificate (default: the image's CAs)",
          ).optional(),
        }),
        {
          rule: "!has(self.caConfigMap) || self.url.startsWith('mqtts://')",
          message: "broker.external.caConfigMap needs an mqtts:// url",
        },
      ),
      "a broker the operator does not run",
    ).optional(),
  }),
  {
    rule: "has(self.managed) != has(self.external)",
    message: "set exactly one of broker.managed and broker.external",
  },
);

const placement = cel(
  described(
    z.record(z.string(), tier),
    "stage name (from the bundle) -> tier that runs it; every stage of the bundle is placed",
  ),
  {
    rule: `self.all(stage, stage.matches('${DNS_LABEL}'))`,
    message: `placement keys: ${stageNameMessage}`,
  },
).meta({ minProperties: 1, maxProperties: 16 });

const exits = cel(
  described(
    z.record(z.string(), threshold),
    "stage name -> exit threshold in [0, 1] (normalized entropy); overrides the bundle's",
  ),
  {
    rule: `self.all(stage, stage.matches('${DNS_LABEL}'))`,
    message: `exits keys: ${stageNameMessage}`,
  },
).meta({ maxProperties: 16 });

const viewsNeedDeviceMessage =
  "tiers.device.views needs the bundle's first stage on the device tier: each view's agent runs it on its own view";
const oneGatewayMessage =
  "with tiers.device.views, tiers.edge.replicas is 0 or 1: every gateway receives every view and fuses it, so a second one would answer each capture twice";
const HAS_VIEWS = "has(self.tiers) && has(self.tiers.device) && has(self.tiers.device.views)";

export const ddnnModelSpecSchema = cel(
  z
    .object({
      bundle,
      placement,
      exits: exits.optional(),
      wire: described(
        z.object({
          dtype: described(
            z.enum(dtypes),
            "dtype of the features a device or edge gateway sends upstream: u8q (the tiers' default: 1 byte per value, quantized per tensor), f16, or f32 (the exact values, so answers equal ddnn eval's)",
          ).optional(),
          compression: described(
            z.enum(compressions),
            "deflate (the tiers' default), none, or sparse (a zero bitmap and the non-zero bytes)",
          ).optional(),
        }),
        "how features travel between tiers (Contract 2's frame); unset fields keep the tiers' defaults",
      ).optional(),
      deadlineMs: described(
        z.number().int().min(1).max(600000),
        "how long a device waits for an answer from the next tier before it answers locally",
      ).default(250),
      tiers: z
        .object({
          device: deviceTier.default({
            nodeSelector: onTierNodes("device"),
            source: { http: { port: 8080 } },
          }),
          edge: edgeTier.default({ replicas: 1, nodeSelector: onTierNodes("edge") }),
          server: serverTier.default({ replicas: 1, batching: { maxBatch: 32, maxDelayMs: 2 } }),
        })
        .default({
          device: { nodeSelector: onTierNodes("device"), source: { http: { port: 8080 } } },
          edge: { replicas: 1, nodeSelector: onTierNodes("edge") },
          server: { replicas: 1, batching: { maxBatch: 32, maxDelayMs: 2 } },
        }),
      broker: broker.default({ managed: { kind: "mosquitto" } }),
    })
    .refine(
      (spec) =>
        !spec.tiers.device.views || Object.values(spec.placement).some((t) => t === "device"),
      { path: ["tiers", "device", "views"], message: viewsNeedDeviceMessage },
    )
    .refine((spec) => !spec.tiers.device.views || spec.tiers.edge.replicas <= 1, {
      path: ["tiers", "edge", "replicas"],
      message: oneGatewayMessage,
    }),
  {
    rule: "!has(self.exits) || self.exits.all(stage, stage in self.placement)",
    message: "every stage in exits must also be in placement",
    fieldPath: ".exits",
  },
  {
    rule: `!(${HAS_VIEWS}) || self.placement.exists(stage, self.placement[stage] == 'device')`,
    message: viewsNeedDeviceMessage,
    fieldPath: ".tiers.device.views",
  },
  {
    rule: `!(${HAS_VIEWS}) || !has(self.tiers.edge) || !has(self.tiers.edge.replicas) || self.tiers.edge.replicas <= 1`,
    message: oneGatewayMessage,
    fieldPath: ".tiers.edge.replicas",
  },
);

export type DDNNModelSpec = z.output<typeof ddnnModelSpecSchema>;
export type DDNNModelSpecInput = z.input<typeof ddnnModelSpecSchema>;
export type BundleSource = DDNNModelSpec["bundle"];

export const CONDITION_TYPES = [
  "Ready",
  "BundleVerified",
  "BrokerReady",
  "ServerReady",
  "EdgeReady",
  "DevicesReady",
] as const;
export type ConditionType = (typeof CONDITION_TYPES)[number];

const condition = z.object({
  type: z.string().min(1).max(316),
  status: z.enum(["True", "False", "Unknown"]),
  observedGeneration: z.number().int().min(0).optional(),
  lastTransitionTime: z.string(),
  reason: z.string().min(1).max(1024),
  message: z.string().max(32768),
});
export type Condition = z.output<typeof condition>;

export const ddnnModelStatusSchema = z.object({
  observedGeneration: z.number().int().optional(),
  conditions: z.array(condition).optional(),
  devices: described(
    z.object({
      desired: z.number().int(),
      ready: z.number().int(),
      updated: z.number().int(),
    }),
    "device agents from the device DaemonSet",
  ).optional(),
  devicesReady: described(z.string(), "ready/desired device agents, for kubectl").optional(),
  views: described(
    z.array(
      z.object({
        view: z.number().int(),
        desired: z.number().int(),
        ready: z.number().int(),
        updated: z.number().int(),
      }),
    ),
    "multi-view bundle: the device agents of each view's DaemonSet (devices counts them all)",
  ).optional(),
  bundleDigest: described(z.string(), "digest of the bundle that is rolled out").optional(),
  bundleDigestShort: described(z.string(), "first 12 characters of bundleDigest").optional(),
  bundle: described(
    z.object({ name: z.string(), version: z.string() }),
    "name and version from the rolled-out bundle's manifest",
  ).optional(),
});
export type DDNNModelStatus = z.output<typeof ddnnModelStatusSchema>;

export { condition as conditionSchema };

/** Object metadata the operator reads. */
export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  deletionTimestamp?: string;
  creationTimestamp?: string;
  ownerReferences?: OwnerReference[];
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

/** A DDNNModel as read from the API server, spec already parsed (defaults filled in). */
export interface DDNNModel {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: ObjectMeta & { namespace: string; uid: string; generation: number };
  spec: DDNNModelSpec;
  status?: DDNNModelStatus;
}

/** Validates a raw object from the API server; the message names the first bad field. */
export function parseModel(
  raw: unknown,
): { ok: true; model: DDNNModel } | { ok: false; error: string } {
  const obj = raw as {
    metadata?: ObjectMeta;
    spec?: unknown;
    status?: unknown;
  };
  const meta = obj?.metadata;
  if (!meta?.name || !meta.namespace || !meta.uid)
    return { ok: false, error: "object has no name, namespace or uid" };
  const spec = ddnnModelSpecSchema.safeParse(obj.spec);
  if (!spec.success) {
    const issue = spec.error.issues[0]!;
    return { ok: false, error: `spec.${issue.path.join(".")}: ${issue.message}` };
  }
  const status = ddnnModelStatusSchema.safeParse(obj.status ?? {});
  return {
    ok: true,
    model: {
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: {
        ...meta,
        namespace: meta.namespace,
        uid: meta.uid,
        generation: meta.generation ?? 0,
      },
      spec: spec.data,
      status: status.success ? status.data : {},
    },
  };
}

/** The Secret where the operator keeps the certificate it issues a managed broker. */
export const brokerCertSecretName = (model: Pick<DDNNModel, "metadata">) =>
  `${model.metadata.name}-broker-cert`;

/**
 * What a managed broker enforces (docs/security.md): TLS and an identity per client, unless
 * broker.managed.insecure. Without broker.managed.tls the operator issues the certificate
 * (`issued`); without broker.managed.auth every in-cluster client still gets its identity.
 * An external broker, or an insecure managed one: neither.
 */
export interface BrokerSecurity {
  /** The Secret with tls.crt, tls.key and ca.crt. */
  tls?: { secretName: string; issued: boolean };
  /** Boards outside the cluster that get an identity too (broker.managed.auth.devices). */
  auth?: { devices: readonly string[] };
}

export function brokerSecurity(model: Pick<DDNNModel, "metadata" | "spec">): BrokerSecurity {
  const managed = model.spec.broker.managed;
  if (!managed || managed.insecure) return {};
  return {
    tls: managed.tls
      ? { secretName: managed.tls.secretName, issued: false }
      : { secretName: brokerCertSecretName(model), issued: true },
    auth: { devices: managed.auth?.devices ?? [] },
  };
}
