/**
 * Per-node broker identities for in-cluster device agents (docs/security.md, "Device identity").
 *
 * A DaemonSet cannot hand each node's Pod its own Secret, so the agent proves where it runs
 * instead: it mounts a projected ServiceAccount token (audience `ddnn-broker`, bound to its Pod)
 * and POSTs it here. The operator asks the API server's TokenReview whether the token is valid
 * for that audience and still bound to a live Pod, reads that Pod, checks that it is this model's
 * device agent (its controller is the model's device DaemonSet, its labels are the agent's) and
 * answers with the broker identity of the Pod's node: the same HMAC derivation as every other
 * identity (operator/broker-auth.ts), so nothing is stored and every replica answers alike.
 *
 * A node's kubelet can only obtain tokens for Pods bound to that node (NodeRestriction), and a
 * Pod's spec.nodeName never changes, so a compromised board gets its own identity and no other.
 */
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import type { V1EnvVar, V1PodTemplateSpec } from "@kubernetes/client-node";
import { parseModelRef } from "../core/topics.js";
import { agentConfig } from "../device-agent/config.js";
import { identityName, identityPassword, viewDeviceId } from "./broker-auth.js";
import {
  COMPONENT_LABEL,
  deviceViewName,
  MODEL_LABEL,
  type NodeLabels,
  objectName,
  VIEW_LABEL,
} from "./builders.js";
import { type KubeClient, KubeError, type KubeObject } from "./kube.js";
import type { TierPlan } from "./placement.js";
import { brokerSecurity, type DDNNModel, parseModel } from "./spec.js";

/** The audience the agents' projected tokens carry; a token for any other is refused. */
export const IDENTITY_AUDIENCE = "ddnn-broker";
/** Where the agent POSTs its token: `{"model": "<name>"}` with `Authorization: Bearer <token>`. */
export const IDENTITY_PATH = "/v1/device-credentials";
/** The operator's identity listener when none is given. */
export const IDENTITY_PORT = 8444;

/**
 * What the exchange reads: TokenReview create and Pod get go to the API server (`client`); the
 * DDNNModel comes from the operator's cache (`model`: the raw object, or undefined), as every
 * other read of a model does (RBAC grants no get of DDNNModels).
 */
export interface IdentityKube {
  client: Pick<KubeClient, "create" | "get">;
  model(namespace: string, name: string): unknown;
}

export interface DeviceCredentials {
  username: string;
  password: string;
  /** The node the identity belongs to. */
  node: string;
  /** The agent's device id: the node's name, or `<node>-view<v>` for a view's agent. */
  deviceId: string;
}

/** How the operator's objects let device agents use the exchange (BuildInput.deviceIdentity). */
export interface DeviceIdentitySettings {
  /** The endpoint as the agents reach it (the chart's Service: https://<release>-identity.<ns>.svc:8444). */
  url: string;
  /** PEM of the CA that signs the endpoint's certificate; the agents get it in a ConfigMap. */
  caPem?: string;
}

/** Where the device Pod mounts its projected token (the agent's --identity-token default). */
export const IDENTITY_TOKEN_DIR = "/var/run/secrets/ddnn";
/** Where the device Pod mounts the endpoint's CA. */
export const IDENTITY_CA_DIR = "/etc/ddnn/identity-ca";
/** Lifetime the kubelet asks for; it renews the file at 80% of it, the agent reads it per try. */
const TOKEN_SECONDS = 3600;

/** The ConfigMap with the identity endpoint's CA certificate, one per model (public data). */
export const identityCaConfigMapName = (model: Pick<DDNNModel, "metadata">) =>
  `${model.metadata.name}-identity-ca`;

/** Whether a model's device agents get their broker identity from the exchange. */
export function usesDeviceIdentity(model: DDNNModel, plan: TierPlan): boolean {
  return brokerSecurity(model).auth !== undefined && plan.device.length > 0;
}

/**
 * The device Pod template's part of the exchange: the projected token (audience ddnn-broker,
 * bound to the Pod by the kubelet), the endpoint, and its CA. The Pod gets no other credential:
 * no broker password in its environment and no API token (the agent never calls the API server).
 */
export function addDeviceIdentity(
  template: V1PodTemplateSpec,
  model: DDNNModel,
  settings: DeviceIdentitySettings,
): void {
  const spec = template.spec!;
  const container = spec.containers[0]!;
  const names = agentConfig.env;
  spec.automountServiceAccountToken = false;
  spec.volumes = [
    ...(spec.volumes ?? []),
    {
      name: "identity-token",
      projected: {
        sources: [
          {
            serviceAccountToken: {
              audience: IDENTITY_AUDIENCE,
              expirationSeconds: TOKEN_SECONDS,
              path: "token",
            },
          },
        ],
      },
    },
  ];
  container.volumeMounts = [
    ...(container.volumeMounts ?? []),
    { name: "identity-token", mountPath: IDENTITY_TOKEN_DIR, readOnly: true },
  ];
  const env: V1EnvVar[] = [
    { name: names.identityUrl, value: settings.url },
    { name: names.identityToken, value: `${IDENTITY_TOKEN_DIR}/token` },
  ];
  if (settings.caPem !== undefined) {
    spec.volumes.push({
      name: "identity-ca",
      configMap: { name: identityCaConfigMapName(model) },
    });
    container.volumeMounts.push({
      name: "identity-ca",
      mountPath: IDENTITY_CA_DIR,
      readOnly: true,
    });
    env.push({ name: names.identityCa, value: `${IDENTITY_CA_DIR}/ca.crt` });
  }
  // The identity takes the place of the credentials Secret's pair for devices.
  container.env = [
    ...(container.env ?? []).filter(
      (e) => e.name !== names.brokerUsername && e.name !== names.brokerPassword,
    ),
    ...env,
  ];
}

/** What the builders read of the Node cache: each node's name and labels. */
export function nodeLabelsOf(nodes: readonly KubeObject[]): NodeLabels[] {
  return nodes
    .filter((n) => (n.metadata?.name ?? "") !== "")
    .map((n) => ({ name: n.metadata!.name!, labels: n.metadata?.labels ?? {} }));
}

/** A refused exchange: the HTTP status and a message that names the problem (never the token). */
export class IdentityError extends Error {
  override name = "IdentityError";
  constructor(
    readonly status: 400 | 401 | 403 | 404 | 409 | 503,
    message: string,
  ) {
    super(message);
  }
}

interface TokenReview {
  status?: {
    authenticated?: boolean;
    error?: string;
    audiences?: string[];
    user?: { username?: string; uid?: string; extra?: Record<string, string[]> };
  };
}

interface Pod extends KubeObject {
  spec?: { nodeName?: string; serviceAccountName?: string };
  status?: { phase?: string };
}

const extra = (review: TokenReview, key: string): string | undefined =>
  review.status?.user?.extra?.[`authentication.kubernetes.io/${key}`]?.[0];

const SA_PREFIX = "system:serviceaccount:";

/**
 * Checks a device agent's token and returns its node's broker identity. Every refusal is an
 * IdentityError; an API server that cannot be reached is a 503 (the agent retries).
 */
export async function exchangeDeviceToken(
  kube: IdentityKube,
  brokerKey: Uint8Array | undefined,
  token: string,
  modelName: string,
): Promise<DeviceCredentials> {
  if (!brokerKey)
    throw new IdentityError(
      503,
      "the operator has no broker key (DDNN_BROKER_KEY), so it issues no broker identities",
    );
  const { client } = kube;
  let review: TokenReview;
  try {
    review = await client.create<TokenReview>(
      { apiVersion: "authentication.k8s.io/v1", plural: "tokenreviews" },
      {
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenReview",
        spec: { token, audiences: [IDENTITY_AUDIENCE] },
      },
    );
  } catch (err) {
    throw unavailable("TokenReview", err);
  }
  if (!review.status?.authenticated)
    throw new IdentityError(
      401,
      `the token is not valid for audience ${IDENTITY_AUDIENCE}${review.status?.error ? `: ${review.status.error}` : ""}`,
    );
  if (!(review.status.audiences ?? []).includes(IDENTITY_AUDIENCE))
    throw new IdentityError(401, `the token is not valid for audience ${IDENTITY_AUDIENCE}`);
  const username = review.status.user?.username ?? "";
  if (!username.startsWith(SA_PREFIX))
    throw new IdentityError(403, `${username || "the token"} is not a ServiceAccount`);
  const [namespace, serviceAccount] = username.slice(SA_PREFIX.length).split(":");
  const podName = extra(review, "pod-name");
  const podUid = extra(review, "pod-uid");
  if (!namespace || !serviceAccount || !podName || !podUid)
    throw new IdentityError(403, "the token is not bound to a Pod (use a projected token)");

  const model = kube.model(namespace, modelName);
  if (!model) throw new IdentityError(404, `no DDNNModel ${namespace}/${modelName}`);
  const parsed = parseModel(model);
  if (!parsed.ok)
    throw new IdentityError(409, `DDNNModel ${namespace}/${modelName}: ${parsed.error}`);
  if (!brokerSecurity(parsed.model).auth)
    throw new IdentityError(
      409,
      `DDNNModel ${namespace}/${modelName} has an insecure or external broker: it takes no identities`,
    );

  let pod: Pod | undefined;
  try {
    pod = await client.get<Pod>({ apiVersion: "v1", plural: "pods", namespace, name: podName });
  } catch (err) {
    if (!(err instanceof KubeError && err.status === 404))
      throw unavailable(`GET Pod ${namespace}/${podName}`, err);
  }
  const who = `Pod ${namespace}/${podName}`;
  if (!pod || pod.metadata?.uid !== podUid)
    throw new IdentityError(403, `${who}, which the token is bound to, no longer exists`);
  if (pod.metadata?.deletionTimestamp || ["Succeeded", "Failed"].includes(pod.status?.phase ?? ""))
    throw new IdentityError(403, `${who} is terminating`);
  const owner = pod.metadata?.ownerReferences?.find((o) => o.controller);
  const labels = pod.metadata?.labels ?? {};
  // A view's agent: its view label names a view of the model, its controller that view's DaemonSet.
  const views = parsed.model.spec.tiers.device.views ?? [];
  const view = views.find((v) => labels[VIEW_LABEL] === String(v.view))?.view;
  const daemonSet =
    view === undefined ? objectName(parsed.model, "device") : deviceViewName(parsed.model, view);
  if (
    owner?.kind !== "DaemonSet" ||
    owner.name !== daemonSet ||
    labels[MODEL_LABEL] !== modelName ||
    labels[COMPONENT_LABEL] !== "device"
  )
    throw new IdentityError(
      403,
      `${who} is not a device agent of DDNNModel ${namespace}/${modelName} (DaemonSet ${daemonSet})`,
    );
  if ((pod.spec?.serviceAccountName ?? "default") !== serviceAccount)
    throw new IdentityError(403, `${who} does not run as ServiceAccount ${serviceAccount}`);
  const node = pod.spec?.nodeName;
  if (!node) throw new IdentityError(409, `${who} is not on a node yet`);
  const tokenNode = extra(review, "node-name");
  if (tokenNode !== undefined && tokenNode !== node)
    throw new IdentityError(403, `the token names node ${tokenNode}, ${who} runs on ${node}`);

  const deviceId = view === undefined ? node : viewDeviceId(node, view);
  const user = identityName(parseModelRef(`${namespace}/${modelName}`), "device", deviceId);
  return { username: user, password: identityPassword(brokerKey, user), node, deviceId };
}

function unavailable(what: string, err: unknown): IdentityError {
  const detail = err instanceof KubeError ? `${err.status} ${err.reason}` : String(err);
  return new IdentityError(503, `${what} failed: ${detail}`);
}

export interface IdentityServerOptions {
  kube: IdentityKube;
  brokerKey: Uint8Array | undefined;
  port?: number;
  host?: string;
  /** PEM files of the listener's certificate and key; plain HTTP without them. */
  tls?: { certFile: string; keyFile: string };
  log?: { info(m: string): void; warn(m: string): void };
  /** Called once per exchange with its outcome (for metrics). */
  observe?: (result: "issued" | "refused" | "error") => void;
}

const MAX_BODY = 16 * 1024;

/** The HTTP(S) endpoint the device agents call; any operator replica can answer. */
export class DeviceIdentityServer {
  private server: http.Server | https.Server | undefined;

  constructor(private readonly options: IdentityServerOptions) {}

  async start(): Promise<number> {
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
      void this.handle(req, res);
    };
    const { tls } = this.options;
    this.server = tls
      ? https.createServer(
          { cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile) },
          handler,
        )
      : http.createServer(handler);
    this.server.requestTimeout = 10_000;
    const server = this.server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.options.port ?? IDENTITY_PORT, this.options.host ?? "0.0.0.0", () =>
        resolve(),
      );
    });
    return (server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const reply = (status: number, body: unknown) => {
      const text = JSON.stringify(body);
      res.writeHead(status, {
        "Content-Type": "application/json",
        "Content-Length": Buffer.byteLength(text),
        "Cache-Control": "no-store",
      });
      res.end(text);
    };
    const refuse = (status: number, message: string) => reply(status, { error: message });
    if ((req.url ?? "").split("?")[0] !== IDENTITY_PATH)
      return refuse(404, `no such endpoint; POST ${IDENTITY_PATH}`);
    if (req.method !== "POST") return refuse(405, `POST ${IDENTITY_PATH}`);
    const auth = req.headers.authorization ?? "";
    const token = /^Bearer (\S+)$/.exec(auth)?.[1];
    if (!token) return refuse(401, "no bearer token (Authorization: Bearer <projected token>)");
    let model: string;
    try {
      const body = await readBody(req);
      const parsed = JSON.parse(body) as { model?: unknown };
      if (typeof parsed.model !== "string" || parsed.model === "")
        throw new Error('the body needs "model": the DDNNModel name');
      model = parsed.model;
    } catch (err) {
      return refuse(400, `bad request: ${(err as Error).message}`);
    }
    try {
      const creds = await exchangeDeviceToken(
        this.options.kube,
        this.options.brokerKey,
        token,
        model,
      );
      this.options.observe?.("issued");
      this.options.log?.info(`issued broker identity ${creds.username}`);
      reply(200, creds);
    } catch (err) {
      if (err instanceof IdentityError) {
        this.options.observe?.(err.status === 503 ? "error" : "refused");
        this.options.log?.warn(`refused a device identity for ${model}: ${err.message}`);
        return refuse(err.status, err.message);
      }
      this.options.observe?.("error");
      this.options.log?.warn(`device identity for ${model} failed: ${String(err)}`);
      return refuse(500, "internal error");
    }
  }
}

function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new Error(`body over ${MAX_BODY} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}
