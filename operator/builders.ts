import { createHash, createPrivateKey, X509Certificate } from "node:crypto";
import type {
  V1Affinity,
  V1ConfigMap,
  V1Container,
  V1DaemonSet,
  V1Deployment,
  V1EnvVar,
  V1PodSpec,
  V1PodTemplateSpec,
  V1ResourceRequirements,
  V1Secret,
  V1Service,
  V1Toleration,
  V1Volume,
  V1VolumeMount,
} from "@kubernetes/client-node";
import {
  brokerInsecurity,
  encodingFields,
  PROXY_ENV,
  PROXY_URL_ENV,
  type ProxyVariable,
  program,
  tierFields,
} from "../core/config.js";
import { parseModelRef } from "../core/topics.js";
import { agentConfig } from "../device-agent/config.js";
import { gatewayConfig } from "../gateway/config.js";
import { serverConfig } from "../server/config.js";
import {
  aclFile,
  brokerIdentities,
  identityPassword,
  passwordFile,
  viewDeviceId,
} from "./broker-auth.js";
import {
  addDeviceIdentity,
  type DeviceIdentitySettings,
  identityCaConfigMapName,
  usesDeviceIdentity,
} from "./device-identity.js";
import { type BundleFacts, type TierPlan, viewCount } from "./placement.js";
import {
  API_VERSION,
  type BrokerSecurity,
  brokerSecurity,
  type DDNNModel,
  type DDNNModelSpec,
  KIND,
  NODE_PROBLEM_TOLERATION_SECONDS,
  type Tier,
  tierNodeLabel,
  VIEW_NODE_LABEL,
} from "./spec.js";
import { type Issuer, issueServerCertificate } from "./x509.js";

/**
 * Builders: every object the operator owns, as a pure function of the DDNNModel, the verified
 * bundle and the operator's settings. Nothing here talks to the API server.
 */

export const FIELD_MANAGER = "ddnn-operator";
export const MANAGED_BY = "ddnn-operator";
export const MODEL_LABEL = "fog.ddnn.io/model";
export const COMPONENT_LABEL = "app.kubernetes.io/component";
export const MANAGED_BY_LABEL = "app.kubernetes.io/managed-by";
/** On a multi-view model's device DaemonSets and their Pods: the view they run ("0", "1", ...). */
export const VIEW_LABEL = VIEW_NODE_LABEL;
/** sha256 of the applied object, so a reconcile can tell "already applied" without a request. */
export const APPLIED_HASH_ANNOTATION = "fog.ddnn.io/applied-sha256";

export const HTTP_PORT = 8080;
/** A view's device Pod: its node's name, for its device id (Kubernetes' $(VAR) expansion). */
export const NODE_NAME_ENV = "NODE_NAME";
export const MQTT_PORT = 1883;
/** The managed broker's TLS listener (broker.managed.tls): it then has no plaintext one. */
export const MQTTS_PORT = 8883;
/** Where the managed broker reads its password file and ACL (the Secret <model>-broker-auth). */
export const BROKER_AUTH_MOUNT = "/mosquitto/auth";
/** Where the managed broker reads its certificate and key (the Secret of broker.managed.tls). */
export const BROKER_TLS_MOUNT = "/mosquitto/tls";
/** Where a ConfigMap-held bundle is mounted in the tier Pods. */
export const BUNDLE_MOUNT = "/var/lib/ddnn/bundle";
/** Where a tier keeps the bundle it downloaded from spec.bundle.url (its --bundle-cache). */
export const BUNDLE_CACHE_MOUNT = "/var/cache/ddnn/bundles";
/** Where an external broker's CA ConfigMap is mounted in every tier. */
export const BROKER_CA_MOUNT = "/etc/ddnn/broker-ca";

export interface OperatorImages {
  /** The ddnn-fog image (entrypoint `ddnn`). */
  image: string;
  /** The managed broker's image (Mosquitto 2). */
  brokerImage: string;
}

export interface BuildInput {
  model: DDNNModel;
  bundle: BundleFacts;
  plan: TierPlan;
  images: OperatorImages;
  /** HTTP_PROXY, HTTPS_PROXY, NO_PROXY for the tiers' bundle download (see proxyEnvForPods). */
  proxy?: ProxyEnv;
  /**
   * The operator's broker key: every broker password of a model with a secure managed broker is
   * derived from it (operator/broker-auth.ts). Such a model cannot be built without it.
   */
  brokerKey?: Uint8Array;
  /**
   * The operator's device identity endpoint (operator/device-identity.ts): device agents of a
   * model with a secure managed broker get their node's identity there. Such a model cannot be built
   * without it.
   */
  deviceIdentity?: DeviceIdentitySettings;
  /** The cluster's nodes (name and labels): each device node's identity goes in the password file. */
  nodes?: readonly NodeLabels[];
  /**
   * The operator's broker CA: it issues the certificate of a managed broker without
   * broker.managed.tls (Secret <model>-broker-cert). Such a model cannot be built without it.
   */
  brokerCa?: Issuer;
  /** The issued certificate's Secret as it is now (the cache): kept while still good. */
  currentBrokerCert?: V1Secret;
  /** The clock for certificate issuance and renewal. */
  now?: Date;
}

/** What the builders read of a Node. */
export interface NodeLabels {
  name: string;
  labels: Readonly<Record<string, string>>;
}

/** Proxy variables by their conventional upper-case names. */
export type ProxyEnv = Readonly<Partial<Record<ProxyVariable, string>>>;

/**
 * The operator's own proxy settings, for the tier Pods: the operator verifies a bundle URL through
 * them, so the Pods must download it the same way. A proxy URL with credentials is not copied (a
 * Pod spec is no place for a secret); `skipped` names it so the operator can say so.
 */
export function proxyEnvForPods(env: Readonly<Record<string, string | undefined>>): {
  proxy: ProxyEnv;
  skipped: string[];
} {
  const proxy: Partial<Record<ProxyVariable, string>> = {};
  const skipped: string[] = [];
  for (const name of PROXY_ENV) {
    const value = env[name] ?? env[name.toLowerCase()];
    if (value === undefined || value === "") continue;
    if (PROXY_URL_ENV.includes(name) && /\/\/[^/@]*@/.test(value)) skipped.push(name);
    else proxy[name] = value;
  }
  return { proxy, skipped };
}

export type Component = Tier | "broker";

/** Any object the operator applies; `kind` picks the API path. */
export type OwnedObject = V1Deployment | V1DaemonSet | V1Service | V1ConfigMap | V1Secret;

/** Kinds the operator owns, with their API paths (watched, applied and pruned). */
export const OWNED_KINDS = [
  { apiVersion: "apps/v1", kind: "Deployment", plural: "deployments" },
  { apiVersion: "apps/v1", kind: "DaemonSet", plural: "daemonsets" },
  { apiVersion: "v1", kind: "Service", plural: "services" },
  { apiVersion: "v1", kind: "ConfigMap", plural: "configmaps" },
  // Only the broker's password file, the identities' credentials and the issued certificate.
  { apiVersion: "v1", kind: "Secret", plural: "secrets" },
] as const;

/** The mosquitto.conf of a managed broker. Nagle's algorithm costs ~44 ms per hop (DESIGN.md). */
export const MOSQUITTO_CONF = `# Written by ddnn-operator.
listener ${MQTT_PORT}
protocol mqtt
allow_anonymous true
set_tcp_nodelay true
persistence false
max_queued_messages 10000
log_dest stdout
log_type error
log_type warning
log_type notice
`;

/**
 * The mosquitto.conf of a managed broker with what it enforces (brokerSecurity): a TLS listener
 * only (from the Secret's tls.crt and tls.key; Mosquitto 2's default versions, TLS 1.2 and 1.3),
 * and/or no anonymous client, a password file and an ACL. An insecure broker: MOSQUITTO_CONF.
 */
export function mosquittoConf(managed: BrokerSecurity): string {
  if (!managed.tls && !managed.auth) return MOSQUITTO_CONF;
  const listener = managed.tls
    ? [
        `listener ${MQTTS_PORT}`,
        `certfile ${BROKER_TLS_MOUNT}/tls.crt`,
        `keyfile ${BROKER_TLS_MOUNT}/tls.key`,
      ]
    : [`listener ${MQTT_PORT}`];
  const auth = managed.auth
    ? [
        "allow_anonymous false",
        `password_file ${BROKER_AUTH_MOUNT}/passwd`,
        `acl_file ${BROKER_AUTH_MOUNT}/acl`,
      ]
    : ["allow_anonymous true"];
  return MOSQUITTO_CONF.replace(`listener ${MQTT_PORT}\n`, `${listener.join("\n")}\n`).replace(
    "allow_anonymous true\n",
    `${auth.join("\n")}\n`,
  );
}

/**
 * How often the broker container looks for a changed password file, ACL or certificate (the
 * kubelet updates a mounted Secret in place, within about a minute) and sends Mosquitto SIGHUP,
 * which makes it read them again: credentials rotate without restarting the broker.
 */
export const BROKER_RELOAD_SECONDS = 10;

/**
 * The broker container's command with auth or TLS: Mosquitto in the background, a loop that sends
 * it SIGHUP when a watched file changes, SIGTERM passed on. `sleep & wait` keeps the trap prompt.
 */
export function brokerReloadScript(watched: readonly string[]): string {
  const sum = `cat ${watched.join(" ")} 2>/dev/null | cksum`;
  return [
    "mosquitto -c /mosquitto/config/mosquitto.conf & pid=$!",
    "trap 'kill -TERM \"$pid\"' TERM INT",
    `last=$(${sum})`,
    'while kill -0 "$pid" 2>/dev/null; do',
    `  sleep ${BROKER_RELOAD_SECONDS} & wait $!`,
    `  now=$(${sum})`,
    '  if [ "$now" != "$last" ]; then last=$now; kill -HUP "$pid"; fi',
    "done",
    'wait "$pid"',
  ].join("\n");
}

export function objectName(model: Pick<DDNNModel, "metadata">, component: Component): string {
  return `${model.metadata.name}-${component}`;
}

/** The device DaemonSet of view `view` of a multi-view model: `<name>-device-view<view>`. */
export function deviceViewName(model: Pick<DDNNModel, "metadata">, view: number): string {
  return `${objectName(model, "device")}-view${view}`;
}

/** A view's placement, with the defaults of tiers.device.views filled in. */
export type ViewPlacement = NonNullable<DDNNModelSpec["tiers"]["device"]["views"]>[number];

/**
 * The views the operator runs, in view order: tiers.device.views for a multi-view bundle (the
 * placement check made sure they are its views 0..K-1), none for a one-view bundle.
 */
export function placedViews(input: Pick<BuildInput, "model" | "bundle">): ViewPlacement[] {
  if (viewCount(input.bundle) === 1) return [];
  return [...(input.model.spec.tiers.device.views ?? [])].sort((a, b) => a.view - b.view);
}

/** A multi-view model's gateway fuses the views of every capture, edge stage or not. */
const fuses = (input: Pick<BuildInput, "bundle">) => viewCount(input.bundle) > 1;

/**
 * The nodes that see a view: the device tier's nodeSelector with the view's own added, by default
 * the view label (`fog.ddnn.io/view: "<view>"`).
 */
export function viewNodeSelector(
  device: Pick<DDNNModelSpec["tiers"]["device"], "nodeSelector">,
  placement: ViewPlacement,
): Record<string, string> {
  return {
    ...device.nodeSelector,
    ...(placement.nodeSelector ?? { [VIEW_NODE_LABEL]: String(placement.view) }),
  };
}

export function selectorLabels(
  model: Pick<DDNNModel, "metadata">,
  component: Component,
): Record<string, string> {
  return { [MODEL_LABEL]: model.metadata.name, [COMPONENT_LABEL]: component };
}

function labels(
  model: DDNNModel,
  component: Component,
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    "app.kubernetes.io/name": "ddnn-fog",
    "app.kubernetes.io/instance": model.metadata.name,
    [MANAGED_BY_LABEL]: MANAGED_BY,
    ...selectorLabels(model, component),
    ...extra,
  };
}

function metadata(model: DDNNModel, component: Component, extra: Record<string, string> = {}) {
  return {
    name: objectName(model, component),
    namespace: model.metadata.namespace,
    labels: labels(model, component, extra),
    ownerReferences: [
      {
        apiVersion: API_VERSION,
        kind: KIND,
        name: model.metadata.name,
        uid: model.metadata.uid,
        controller: true,
        blockOwnerDeletion: true,
      },
    ],
  };
}

/** The broker address the tiers connect to. */
export function brokerUrl(model: DDNNModel): string {
  const external = model.spec.broker.external;
  if (external) return external.url;
  const host = `${objectName(model, "broker")}.${model.metadata.namespace}.svc`;
  return brokerSecurity(model).tls
    ? `mqtts://${host}:${MQTTS_PORT}`
    : `mqtt://${host}:${MQTT_PORT}`;
}

/** The Secret of a managed broker with auth: the password file (hashes only) and the ACL. */
export const brokerAuthSecretName = (model: Pick<DDNNModel, "metadata">) =>
  `${model.metadata.name}-broker-auth`;
/** The Secret with each identity's user name and password, for the Pods and for device boards. */
export const brokerCredentialsSecretName = (model: Pick<DDNNModel, "metadata">) =>
  `${model.metadata.name}-broker-credentials`;

/** The identities of a model whose managed broker has auth, or undefined. */
function identitiesOf(input: BuildInput) {
  const { auth } = brokerSecurity(input.model);
  if (!auth) return undefined;
  if (!input.brokerKey)
    throw new Error(
      "the managed broker gives every client its own identity, derived from the operator's broker key (DDNN_BROKER_KEY, made by the Helm chart), which is not set; set broker.managed.insecure: true for an anonymous broker",
    );
  const ref = parseModelRef(`${input.model.metadata.namespace}/${input.model.metadata.name}`);
  return {
    key: input.brokerKey,
    ids: brokerIdentities(
      ref,
      input.plan,
      [...auth.devices, ...(usesDeviceIdentity(input.model, input.plan) ? deviceIds(input) : [])],
      fuses(input),
    ),
  };
}

/** Whether a Node carries every label of a selector. */
const selects = (selector: Readonly<Record<string, string>>, node: NodeLabels) =>
  Object.entries(selector).every(([k, v]) => node.labels[k] === v);

/**
 * The device ids of in-cluster agents: each node the device tier may run on (its nodeSelector),
 * or for a multi-view model `<node>-view<v>` for each view and node that sees it.
 */
export function deviceIds(input: Pick<BuildInput, "model" | "bundle" | "nodes">): string[] {
  const device = input.model.spec.tiers.device;
  const nodes = input.nodes ?? [];
  const views = placedViews(input);
  const ids =
    views.length === 0
      ? nodes.filter((n) => selects(device.nodeSelector, n)).map((n) => n.name)
      : views.flatMap((p) =>
          nodes
            .filter((n) => selects(viewNodeSelector(device, p), n))
            .map((n) => viewDeviceId(n.name, p.view)),
        );
  return [...new Set(ids)].sort();
}

function bundleLocation(spec: DDNNModelSpec): string {
  if (spec.bundle.url) return spec.bundle.url;
  return `${BUNDLE_MOUNT}/${spec.bundle.configMap!.key}`;
}

function thresholds(spec: DDNNModelSpec, stages: readonly string[]): string {
  return stages
    .filter((s) => spec.exits?.[s] !== undefined)
    .map((s) => `${s}=${spec.exits![s]}`)
    .join(",");
}

/**
 * The environment names of the fields every tier program shares (core/config.ts `tierFields`):
 * the same in `ddnn server`, `ddnn gateway` and `ddnn agent`. A program's own fields are named by
 * its program (`serverConfig.env`, `agentConfig.env`); no variable is spelled here.
 */
const TIER_ENV = program(tierFields).env;
/** The same for the fields of the tiers that send features upstream (agent and gateway). */
const ENCODING_ENV = program(encodingFields).env;

function env(name: string, value: string | number): V1EnvVar {
  return { name, value: String(value) };
}

/**
 * Environment every tier reads. Test/pod-env-contract.test.ts feeds it, with each tier's own, into
 * the tier program's loader: a variable the program does not read fails there.
 */
function tierEnv(input: BuildInput, tier: Tier, httpPort: number): V1EnvVar[] {
  const { model, bundle, plan } = input;
  const spec = model.spec;
  const out: V1EnvVar[] = [
    env(TIER_ENV.model, `${model.metadata.namespace}/${model.metadata.name}`),
    env(TIER_ENV.bundle, bundleLocation(spec)),
    env(TIER_ENV.bundleDigest, bundle.digest),
  ];
  // A multi-view bundle's gateway may run no stage at all: it fuses the views (and then runs
  // only what DDNN_STAGES names, so it is left out rather than empty).
  if (plan[tier].length > 0) out.push(env(TIER_ENV.stages, plan[tier].join(",")));
  if (spec.bundle.url) out.push(env(TIER_ENV.bundleCache, BUNDLE_CACHE_MOUNT));
  // Only the device and the edge send features; the server answers.
  if (tier !== "server" && spec.wire?.dtype) out.push(env(ENCODING_ENV.dtype, spec.wire.dtype));
  if (tier !== "server" && spec.wire?.compression)
    out.push(env(ENCODING_ENV.compression, spec.wire.compression));
  // The fusing gateway's local aggregate exits at stage 0's threshold (docs/bundle-views.md).
  const exitsHere =
    tier === "edge" && fuses(input) ? [bundle.stages[0]!, ...plan.edge] : plan[tier];
  const t = thresholds(spec, exitsHere);
  if (t !== "") out.push(env(TIER_ENV.threshold, t));
  out.push(env(TIER_ENV.broker, brokerUrl(model)));
  const secret = spec.broker.external?.secretRef;
  const identity = tier !== "device" && identitiesOf(input)?.ids[tier];
  if (identity) {
    // The password only as a reference: no Pod spec, event or status ever holds it.
    const name = brokerCredentialsSecretName(model);
    out.push(
      {
        name: TIER_ENV.brokerUsername,
        valueFrom: { secretKeyRef: { name, key: `${tier}.username` } },
      },
      {
        name: TIER_ENV.brokerPassword,
        valueFrom: { secretKeyRef: { name, key: `${tier}.password` } },
      },
    );
  }
  if (secret) {
    // Credentials only ever travel as references: the operator never reads the Secret.
    out.push(
      {
        name: TIER_ENV.brokerUsername,
        valueFrom: { secretKeyRef: { name: secret.name, key: secret.usernameKey } },
      },
      {
        name: TIER_ENV.brokerPassword,
        valueFrom: { secretKeyRef: { name: secret.name, key: secret.passwordKey } },
      },
    );
  }
  const ca = spec.broker.external?.caConfigMap;
  if (ca) out.push(env(TIER_ENV.brokerCa, `${BROKER_CA_MOUNT}/${ca.key}`));
  if (brokerSecurity(model).tls) out.push(env(TIER_ENV.brokerCa, `${BROKER_CA_MOUNT}/ca.crt`));
  // The tiers refuse a plaintext or anonymous broker on another host unless told; the spec asked
  // for this broker, so the Pod says so where anyone reading it sees it (docs/security.md).
  // A device agent of a secure broker logs in with the identity it gets from the exchange.
  const exchanged = tier === "device" && usesDeviceIdentity(model, input.plan);
  if (
    brokerInsecurity(brokerUrl(model), secret !== undefined || !!identity || exchanged) !==
    undefined
  )
    out.push(env(TIER_ENV.insecure, "true"));
  out.push(env(TIER_ENV.httpPort, httpPort));
  for (const [name, value] of Object.entries(input.proxy ?? {})) out.push(env(name, value));
  return out;
}

function resources(
  r: DDNNModelSpec["tiers"]["server"]["resources"],
): V1ResourceRequirements | undefined {
  if (!r) return undefined;
  const text = (m: Record<string, string | number> | undefined) =>
    m && Object.fromEntries(Object.entries(m).map(([k, v]) => [k, String(v)]));
  const out: V1ResourceRequirements = {};
  if (r.limits) out.limits = text(r.limits);
  if (r.requests) out.requests = text(r.requests);
  return out;
}

const SECURITY_CONTEXT = {
  allowPrivilegeEscalation: false,
  readOnlyRootFilesystem: true,
  capabilities: { drop: ["ALL"] },
};

/**
 * Linux nodes the image runs on. The server and the broker need amd64 or arm64; a device agent or
 * an edge gateway also runs on 32-bit ARM boards (linux/arm/v7, the Odroid-XU4), where the image
 * has no onnxruntime-node binary and the tier runs on onnxruntime-web's WebAssembly build
 * (docs/image.md).
 */
const platform = (arches: readonly string[]): V1Affinity => ({
  nodeAffinity: {
    requiredDuringSchedulingIgnoredDuringExecution: {
      nodeSelectorTerms: [
        {
          matchExpressions: [
            { key: "kubernetes.io/arch", operator: "In", values: [...arches] },
            { key: "kubernetes.io/os", operator: "In", values: ["linux"] },
          ],
        },
      ],
    },
  },
});
const NODE_AFFINITY = platform(["amd64", "arm64"]);
const BOARD_AFFINITY = platform(["amd64", "arm64", "arm"]);

/**
 * Where a tier's Pods may run. Device and edge Pods need their tier's label (the DDNNModel's default
 * nodeSelector, `fog.ddnn.io/<tier>: "true"`), so one node labelled for several tiers serves them
 * all. The server has no required label: it prefers nodes labelled `fog.ddnn.io/server: "true"`
 * and runs anywhere else when there is none (a one-node lab, a cluster that labels nothing).
 */
function affinity(tier: Tier): V1Affinity {
  if (tier !== "server") return BOARD_AFFINITY;
  return {
    nodeAffinity: {
      ...NODE_AFFINITY.nodeAffinity,
      preferredDuringSchedulingIgnoredDuringExecution: [
        {
          weight: 50,
          preference: {
            matchExpressions: [{ key: tierNodeLabel("server"), operator: "In", values: ["true"] }],
          },
        },
      ],
    },
  };
}

/** Taints the node lifecycle controller puts on a node it lost contact with. */
export const NODE_PROBLEM_TAINTS = [
  "node.kubernetes.io/unreachable",
  "node.kubernetes.io/not-ready",
] as const;

/** The user's tolerations, plus the node-problem ones for each taint the user's do not cover. */
function tolerationsFor(
  tier: Tier,
  user: readonly V1Toleration[] | undefined,
): V1Toleration[] | undefined {
  const given = [...(user ?? [])];
  if (tier === "device") return given;
  const covers = (t: V1Toleration, key: string) =>
    (t.effect === undefined || t.effect === "NoExecute") &&
    (t.key === undefined || t.key === "" ? t.operator === "Exists" : t.key === key);
  for (const key of NODE_PROBLEM_TAINTS)
    if (!given.some((t) => covers(t, key)))
      given.push({
        key,
        operator: "Exists",
        effect: "NoExecute",
        tolerationSeconds: NODE_PROBLEM_TOLERATION_SECONDS[tier],
      });
  return given;
}

function tierPod(
  input: BuildInput,
  tier: Tier,
  command: "server" | "gateway" | "agent",
  options: {
    httpPort: number;
    hostPort?: number;
    extraEnv?: V1EnvVar[];
    nodeSelector?: Record<string, string>;
    tolerations?: V1Toleration[];
    resources?: V1ResourceRequirements;
    labels?: Record<string, string>;
  },
): V1PodTemplateSpec {
  const { model } = input;
  const spec = model.spec;
  const mounts: V1VolumeMount[] = [{ name: "tmp", mountPath: "/tmp" }];
  const volumes: V1Volume[] = [{ name: "tmp", emptyDir: {} }];
  if (spec.bundle.configMap) {
    mounts.push({ name: "bundle", mountPath: BUNDLE_MOUNT, readOnly: true });
    volumes.push({ name: "bundle", configMap: { name: spec.bundle.configMap.name } });
  } else {
    // A downloaded bundle is kept, verified, for restarts without the network: an emptyDir lives
    // as long as the Pod; a device's hostPath as long as the node's disk.
    const hostPath = tier === "device" ? spec.tiers.device.bundleCache?.hostPath : undefined;
    mounts.push({ name: "bundle-cache", mountPath: BUNDLE_CACHE_MOUNT });
    volumes.push(
      hostPath
        ? { name: "bundle-cache", hostPath: { path: hostPath, type: "DirectoryOrCreate" } }
        : { name: "bundle-cache", emptyDir: { sizeLimit: "256Mi" } },
    );
  }
  const ca = spec.broker.external?.caConfigMap;
  if (ca) {
    mounts.push({ name: "broker-ca", mountPath: BROKER_CA_MOUNT, readOnly: true });
    volumes.push({
      name: "broker-ca",
      configMap: { name: ca.name, items: [{ key: ca.key, path: ca.key }] },
    });
  }
  const { tls } = brokerSecurity(input.model);
  if (tls) {
    // Only the CA: the broker's key stays in the broker's Pod.
    mounts.push({ name: "broker-ca", mountPath: BROKER_CA_MOUNT, readOnly: true });
    volumes.push({
      name: "broker-ca",
      secret: { secretName: tls.secretName, items: [{ key: "ca.crt", path: "ca.crt" }] },
    });
  }
  const container: V1Container = {
    name: tier,
    image: input.images.image,
    imagePullPolicy: "IfNotPresent",
    args: [command],
    env: [...tierEnv(input, tier, options.httpPort), ...(options.extraEnv ?? [])],
    ports: [
      {
        name: "http",
        containerPort: options.httpPort,
        protocol: "TCP",
        ...(options.hostPort === undefined ? {} : { hostPort: options.hostPort }),
      },
    ],
    readinessProbe: {
      httpGet: { path: "/readyz", port: "http" },
      periodSeconds: 5,
      failureThreshold: 3,
    },
    livenessProbe: {
      httpGet: { path: "/healthz", port: "http" },
      periodSeconds: 10,
      failureThreshold: 6,
    },
    securityContext: SECURITY_CONTEXT,
    volumeMounts: mounts,
  };
  if (options.resources) container.resources = options.resources;
  const podSpec: V1PodSpec = {
    containers: [container],
    volumes,
    affinity: affinity(tier),
    enableServiceLinks: false,
  };
  if (options.nodeSelector && Object.keys(options.nodeSelector).length > 0)
    podSpec.nodeSelector = options.nodeSelector;
  const tolerations = tolerationsFor(tier, options.tolerations);
  if (tolerations && tolerations.length > 0) podSpec.tolerations = tolerations;
  return {
    metadata: {
      labels: labels(model, tier, options.labels),
      annotations: {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": String(options.httpPort),
        "prometheus.io/path": "/metrics",
      },
    },
    spec: podSpec,
  };
}

/** A stage tier's admission limits (spec.tiers.<tier>.admission) as the program's environment. */
function admissionEnv(
  admission: DDNNModelSpec["tiers"]["server" | "edge"]["admission"],
  names: { readonly maxQueue: string; readonly maxInFlightPerClient: string },
): V1EnvVar[] {
  const out: V1EnvVar[] = [];
  if (admission?.maxQueue !== undefined) out.push(env(names.maxQueue, admission.maxQueue));
  if (admission?.maxInFlightPerClient !== undefined)
    out.push(env(names.maxInFlightPerClient, admission.maxInFlightPerClient));
  return out;
}

export function buildServerDeployment(input: BuildInput): V1Deployment {
  const { model } = input;
  const server = model.spec.tiers.server;
  const batching = server.batching;
  const names = serverConfig.env;
  const extraEnv: V1EnvVar[] = [];
  if (batching.workers !== undefined) extraEnv.push(env(names.workers, batching.workers));
  extraEnv.push(env(names.maxBatch, batching.maxBatch), env(names.maxDelayMs, batching.maxDelayMs));
  extraEnv.push(...admissionEnv(server.admission, names));
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: metadata(model, "server"),
    spec: {
      replicas: server.replicas,
      selector: { matchLabels: selectorLabels(model, "server") },
      template: tierPod(input, "server", "server", {
        httpPort: HTTP_PORT,
        extraEnv,
        nodeSelector: server.nodeSelector,
        tolerations: server.tolerations,
        resources: resources(server.resources),
      }),
    },
  };
}

/** HTTP inference (Open Inference Protocol v2) and /metrics of the server tier. */
export function buildServerService(input: BuildInput): V1Service {
  const { model } = input;
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: metadata(model, "server"),
    spec: {
      type: "ClusterIP",
      selector: selectorLabels(model, "server"),
      ports: [{ name: "http", port: HTTP_PORT, targetPort: "http", protocol: "TCP" }],
    },
  };
}

/**
 * The gateway: the edge stages, and for a multi-view bundle the fusion of every capture's views
 * (then it runs even when no stage is placed on the edge, as `ddnn up --views` starts it).
 */
export function buildEdgeDeployment(input: BuildInput): V1Deployment {
  const { model } = input;
  const edge = model.spec.tiers.edge;
  const extraEnv: V1EnvVar[] = [];
  if (fuses(input) && edge.fusionWindowMs !== undefined)
    extraEnv.push(env(gatewayConfig.env.fusionWindowMs, edge.fusionWindowMs));
  extraEnv.push(...admissionEnv(edge.admission, gatewayConfig.env));
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: metadata(model, "edge"),
    spec: {
      replicas: edge.replicas,
      // Every gateway receives every view (plain subscriptions): two at once during a rolling
      // update would answer each capture twice, so the old one goes first (maxSurge 0). Not
      // Recreate: a Deployment made RollingUpdate keeps its defaulted rollingUpdate under apply,
      // which the API server refuses beside Recreate, so a model whose bundle gains views could
      // not update its gateway.
      ...(fuses(input)
        ? { strategy: { type: "RollingUpdate", rollingUpdate: { maxSurge: 0, maxUnavailable: 1 } } }
        : {}),
      selector: { matchLabels: selectorLabels(model, "edge") },
      template: tierPod(input, "edge", "gateway", {
        httpPort: HTTP_PORT,
        extraEnv,
        nodeSelector: edge.nodeSelector,
        tolerations: edge.tolerations,
        resources: resources(edge.resources),
      }),
    },
  };
}

/** One device agent per device node, its device id the node's name. */
export function buildDeviceDaemonSet(input: BuildInput): V1DaemonSet {
  return deviceDaemonSet(input, undefined);
}

/**
 * A multi-view model's devices: one DaemonSet per view (`<name>-device-view<v>`), its agents
 * started with `--view v` on the nodes that see view v.
 */
export function buildDeviceViewDaemonSets(input: BuildInput): V1DaemonSet[] {
  return placedViews(input).map((placement) => deviceDaemonSet(input, placement));
}

function deviceDaemonSet(input: BuildInput, placement: ViewPlacement | undefined): V1DaemonSet {
  const { model } = input;
  const device = model.spec.tiers.device;
  const source = placement?.source ?? device.source;
  const httpPort = source.http?.port ?? HTTP_PORT;
  const names = agentConfig.env;
  // A device agent is named by its node; a view's agent by its node and view (<node>-view<v>):
  // one node may hold several views (a lab node), and each agent needs its own MQTT client id,
  // reply topic and broker identity.
  const nodeName = { fieldRef: { apiVersion: "v1", fieldPath: "spec.nodeName" } };
  const extraEnv: V1EnvVar[] = placement
    ? [
        { name: NODE_NAME_ENV, valueFrom: nodeName },
        { name: names.deviceId, value: viewDeviceId(`$(${NODE_NAME_ENV})`, placement.view) },
      ]
    : [{ name: names.deviceId, valueFrom: nodeName }];
  extraEnv.push(
    env(names.source, source.http ? "http" : source.mqtt ? "mqtt" : "replay"),
    // Only the device waits for upstream answers; the server and gateway answer what they get.
    env(names.deadlineMs, model.spec.deadlineMs),
  );
  if (source.replay) extraEnv.push(env(names.replayImages, source.replay.path));
  if (placement) {
    extraEnv.push(env(names.view, placement.view));
    if (device.captureSlotMs !== undefined)
      extraEnv.push(env(names.captureSlotMs, device.captureSlotMs));
  }
  const view = placement ? { [VIEW_LABEL]: String(placement.view) } : undefined;
  const template = tierPod(input, "device", "agent", {
    httpPort,
    hostPort: source.http ? httpPort : undefined,
    extraEnv,
    nodeSelector: placement ? viewNodeSelector(device, placement) : device.nodeSelector,
    tolerations: device.tolerations,
    resources: resources(device.resources),
    ...(view ? { labels: view } : {}),
  });
  if (usesDeviceIdentity(model, input.plan)) {
    if (!input.deviceIdentity)
      throw new Error(
        "a secure managed broker with device agents in the cluster needs the operator's device identity endpoint (DDNN_IDENTITY_URL, set by the Helm chart; docs/security.md), which is not set; or set broker.managed.insecure: true",
      );
    addDeviceIdentity(template, model, input.deviceIdentity);
  }
  if (source.replay) {
    // Mount the file itself: a file at / would otherwise mount the node's root over the container's.
    const path = source.replay.path;
    template.spec!.volumes!.push({ name: "replay", hostPath: { path, type: "File" } });
    template.spec!.containers[0]!.volumeMounts!.push({
      name: "replay",
      mountPath: path,
      readOnly: true,
    });
  }
  return {
    apiVersion: "apps/v1",
    kind: "DaemonSet",
    metadata: placement
      ? { ...metadata(model, "device", view), name: deviceViewName(model, placement.view) }
      : metadata(model, "device"),
    spec: {
      // A view's selector has the view label, so the DaemonSets of a model's views never adopt
      // each other's Pods.
      selector: { matchLabels: { ...selectorLabels(model, "device"), ...view } },
      updateStrategy: { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 1 } },
      template,
    },
  };
}

export function buildBrokerConfigMap(input: BuildInput): V1ConfigMap {
  return {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: metadata(input.model, "broker"),
    data: { "mosquitto.conf": mosquittoConf(brokerSecurity(input.model)) },
  };
}

const base64 = (text: string) => Buffer.from(text, "utf8").toString("base64");

/** The managed broker's password file (PBKDF2 hashes) and ACL, mounted at BROKER_AUTH_MOUNT. */
export function buildBrokerAuthSecret(input: BuildInput): V1Secret | undefined {
  const auth = identitiesOf(input);
  if (!auth) return undefined;
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: { ...metadata(input.model, "broker"), name: brokerAuthSecretName(input.model) },
    type: "Opaque",
    data: { passwd: base64(passwordFile(auth.key, auth.ids)), acl: base64(aclFile(auth.ids)) },
  };
}

/**
 * Each identity's user name and password: `server.*` and `edge.*` are referenced by those Pods,
 * `profile.*` is `ddnn profile --kubeconfig`'s, `device.<id>.*` are for the boards named in
 * broker.managed.auth.devices (in-cluster agents get theirs from the identity exchange).
 */
export function buildBrokerCredentialsSecret(input: BuildInput): V1Secret | undefined {
  const auth = identitiesOf(input);
  if (!auth) return undefined;
  const data: Record<string, string> = {};
  const put = (prefix: string, username: string) => {
    data[`${prefix}.username`] = base64(username);
    data[`${prefix}.password`] = base64(identityPassword(auth.key, username));
  };
  if (auth.ids.server) put("server", auth.ids.server.username);
  if (auth.ids.edge) put("edge", auth.ids.edge.username);
  put("profile", auth.ids.profile.username);
  // Boards outside the cluster only: an in-cluster agent gets its password from the exchange.
  for (const id of brokerSecurity(input.model).auth?.devices ?? []) {
    const identity = auth.ids.devices.get(id);
    if (identity) put(`device.${id}`, identity.username);
  }
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: {
      ...metadata(input.model, "broker"),
      name: brokerCredentialsSecretName(input.model),
    },
    type: "Opaque",
    data,
  };
}

/** How long a certificate the operator issues is valid, and how long before its end it renews. */
export const BROKER_CERT_DAYS = 90;
export const BROKER_CERT_RENEW_DAYS = 30;

/** The names the broker's certificate carries: its Service, as the tiers and in-cluster clients reach it. */
export function brokerDnsNames(model: Pick<DDNNModel, "metadata">): string[] {
  const service = objectName(model, "broker");
  const ns = model.metadata.namespace;
  return [`${service}.${ns}.svc`, `${service}.${ns}`, service];
}

const fromBase64 = (text: string | undefined) =>
  text === undefined ? undefined : Buffer.from(text, "base64").toString("utf8");

/** The pair in `secret` when it is still good: same CA, same names, not due for renewal. */
function keptCertificate(
  secret: V1Secret | undefined,
  ca: Issuer,
  names: readonly string[],
  now: Date,
): { certPem: string; keyPem: string } | undefined {
  const certPem = fromBase64(secret?.data?.["tls.crt"]);
  const keyPem = fromBase64(secret?.data?.["tls.key"]);
  if (!certPem || !keyPem || fromBase64(secret?.data?.["ca.crt"]) !== ca.certPem) return undefined;
  try {
    const cert = new X509Certificate(certPem);
    const renewAt = new Date(cert.validTo).getTime() - BROKER_CERT_RENEW_DAYS * 86_400_000;
    const sameNames = cert.subjectAltName === names.map((n) => `DNS:${n}`).join(", ");
    if (!sameNames || now.getTime() >= renewAt) return undefined;
    if (!cert.verify(new X509Certificate(ca.certPem).publicKey)) return undefined;
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) return undefined;
    return { certPem, keyPem };
  } catch {
    return undefined; // unreadable: issue a new one
  }
}

/**
 * The certificate of a managed broker without broker.managed.tls, issued by the operator's broker
 * CA (docs/security.md): kept as it is while good, issued anew for new names, a new CA, or within
 * BROKER_CERT_RENEW_DAYS of its end. The broker's reload loop picks it up without a restart.
 */
export function buildBrokerCertSecret(input: BuildInput): V1Secret | undefined {
  const { tls } = brokerSecurity(input.model);
  if (!tls?.issued) return undefined;
  const ca = input.brokerCa;
  if (!ca)
    throw new Error(
      "the managed broker listens with TLS, and its certificate is issued by the operator's broker CA (DDNN_BROKER_CA_DIR, made by the Helm chart), which is not set; give broker.managed.tls.secretName, or set broker.managed.insecure: true",
    );
  const names = brokerDnsNames(input.model);
  const now = input.now ?? new Date();
  const pair =
    keptCertificate(input.currentBrokerCert, ca, names, now) ??
    issueServerCertificate(ca, names, now, BROKER_CERT_DAYS);
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: { ...metadata(input.model, "broker"), name: tls.secretName },
    type: "kubernetes.io/tls",
    data: {
      "tls.crt": base64(pair.certPem),
      "tls.key": base64(pair.keyPem),
      "ca.crt": base64(ca.certPem),
    },
  };
}

export function buildBrokerDeployment(input: BuildInput): V1Deployment {
  const { model } = input;
  const managed = model.spec.broker.managed!;
  const security = brokerSecurity(model);
  const conf = mosquittoConf(security);
  const mounts: V1VolumeMount[] = [
    { name: "config", mountPath: "/mosquitto/config", readOnly: true },
  ];
  const volumes: V1Volume[] = [
    { name: "config", configMap: { name: objectName(model, "broker") } },
  ];
  const watched: string[] = [];
  if (security.auth) {
    mounts.push({ name: "auth", mountPath: BROKER_AUTH_MOUNT, readOnly: true });
    volumes.push({ name: "auth", secret: { secretName: brokerAuthSecretName(model) } });
    watched.push(`${BROKER_AUTH_MOUNT}/passwd`, `${BROKER_AUTH_MOUNT}/acl`);
  }
  if (security.tls) {
    mounts.push({ name: "tls", mountPath: BROKER_TLS_MOUNT, readOnly: true });
    volumes.push({
      name: "tls",
      secret: {
        secretName: security.tls.secretName,
        items: [
          { key: "tls.crt", path: "tls.crt" },
          { key: "tls.key", path: "tls.key" },
        ],
      },
    });
    watched.push(`${BROKER_TLS_MOUNT}/tls.crt`, `${BROKER_TLS_MOUNT}/tls.key`);
  }
  const container: V1Container = {
    name: "mosquitto",
    image: managed.image ?? input.images.brokerImage,
    imagePullPolicy: "IfNotPresent",
    args:
      watched.length > 0
        ? ["sh", "-c", brokerReloadScript(watched)]
        : ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"],
    ports: [
      {
        name: "mqtt",
        containerPort: security.tls ? MQTTS_PORT : MQTT_PORT,
        protocol: "TCP",
      },
    ],
    readinessProbe: { tcpSocket: { port: "mqtt" }, periodSeconds: 5 },
    livenessProbe: { tcpSocket: { port: "mqtt" }, periodSeconds: 10, failureThreshold: 6 },
    // Started as root, Mosquitto would drop to its own user, which needs CAP_SETUID/SETGID;
    // run it as that user (1883 in the eclipse-mosquitto image) from the start instead.
    securityContext: { ...SECURITY_CONTEXT, runAsUser: 1883, runAsGroup: 1883, runAsNonRoot: true },
    volumeMounts: mounts,
  };
  const r = resources(managed.resources);
  if (r) container.resources = r;
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: metadata(model, "broker"),
    spec: {
      replicas: 1,
      // One broker at a time: two would split the subscribers.
      strategy: { type: "Recreate" },
      selector: { matchLabels: selectorLabels(model, "broker") },
      template: {
        metadata: {
          labels: labels(model, "broker"),
          // The config, not the credentials: a new password file is reloaded, not restarted.
          annotations: { "fog.ddnn.io/config-sha256": sha256(conf) },
        },
        spec: {
          containers: [container],
          volumes,
          affinity: NODE_AFFINITY,
          enableServiceLinks: false,
        },
      },
    },
  };
}

export function buildBrokerService(input: BuildInput): V1Service {
  const { model } = input;
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: metadata(model, "broker"),
    spec: {
      type: "ClusterIP",
      selector: selectorLabels(model, "broker"),
      ports: [
        {
          name: "mqtt",
          port: brokerSecurity(input.model).tls ? MQTTS_PORT : MQTT_PORT,
          targetPort: "mqtt",
          protocol: "TCP",
        },
      ],
    },
  };
}

/** Every object the model should own now; what is not in this list and owned gets deleted. */
export function buildOwnedObjects(input: BuildInput): OwnedObject[] {
  const out: OwnedObject[] = [];
  if (input.model.spec.broker.managed) {
    out.push(buildBrokerConfigMap(input), buildBrokerDeployment(input), buildBrokerService(input));
    const auth = buildBrokerAuthSecret(input);
    const credentials = buildBrokerCredentialsSecret(input);
    const cert = buildBrokerCertSecret(input);
    if (auth) out.push(auth);
    if (credentials) out.push(credentials);
    if (cert) out.push(cert);
    const ca = input.deviceIdentity?.caPem;
    if (ca !== undefined && usesDeviceIdentity(input.model, input.plan))
      out.push({
        apiVersion: "v1",
        kind: "ConfigMap",
        metadata: {
          ...metadata(input.model, "device"),
          name: identityCaConfigMapName(input.model),
        },
        data: { "ca.crt": ca },
      });
  }
  if (input.plan.server.length > 0)
    out.push(buildServerDeployment(input), buildServerService(input));
  if (input.plan.edge.length > 0 || fuses(input)) out.push(buildEdgeDeployment(input));
  if (input.plan.device.length > 0) {
    if (fuses(input)) out.push(...buildDeviceViewDaemonSets(input));
    else out.push(buildDeviceDaemonSet(input));
  }
  return out;
}

export function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}
