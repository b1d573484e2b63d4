/**
 * `ddnn profile --kubeconfig PATH --model NAME`: finds what a DDNNModel deployed (its broker, its
 * server Pods, its device agents) and the settings its tiers run with (bundle, exit thresholds,
 * wire encoding, deadline), so the profile runs its own device agents against that broker and
 * server, as `--attach` does for a fog given by addresses. The Pods are reached at their IPs,
 * which the machine running the profile must route to (as on the test cluster, docs/cluster.md).
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CoreV1Api, CustomObjectsApi, KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { ConfigError } from "../core/config.js";
import {
  brokerCredentialsSecretName,
  brokerUrl,
  type Component,
  HTTP_PORT,
  selectorLabels,
} from "../operator/builders.js";
import { brokerSecurity, type DDNNModel, GROUP, PLURAL, VERSION } from "../operator/spec.js";

type Wire = NonNullable<DDNNModel["spec"]["wire"]>;

/** What the profile runs with, found from the cluster. */
export interface Deployment {
  /** `namespace/name`, the tiers' model reference (their topics). */
  readonly model: string;
  readonly broker: string;
  /** A secure managed broker: the profile's identity, the CA file and the certificate's name. */
  readonly brokerUsername?: string;
  readonly brokerPassword?: string;
  readonly brokerCa?: string;
  readonly brokerTlsName?: string;
  readonly serverUrl: string;
  /** A local path (a ConfigMap's archive written out) or the model's bundle URL. */
  readonly bundle: string;
  readonly bundleDigest: string;
  readonly threshold: Record<string, number>;
  readonly dtype?: NonNullable<Wire["dtype"]>;
  readonly compression?: NonNullable<Wire["compression"]>;
  readonly deadlineMs: number;
  /** What was found, in words, for the report's notes. */
  readonly notes: readonly string[];
}

const ready = (p: V1Pod) =>
  !p.metadata?.deletionTimestamp &&
  p.status?.phase === "Running" &&
  (p.status.conditions ?? []).some((c) => c.type === "Ready" && c.status === "True") &&
  p.status.podIP !== undefined;

/** The model's Ready Pods of one component, by the labels the operator's builders select on. */
async function readyPods(
  core: CoreV1Api,
  model: DDNNModel,
  component: Component,
): Promise<V1Pod[]> {
  const labelSelector = Object.entries(selectorLabels(model, component))
    .map(([k, v]) => `${k}=${v}`)
    .join(",");
  const list = await core.listNamespacedPod({
    namespace: model.metadata.namespace,
    labelSelector,
  });
  return list.items.filter(ready);
}

function kubeMessage(err: unknown): string {
  const e = err as { code?: number; body?: unknown; message?: string };
  const body = typeof e.body === "string" ? e.body : JSON.stringify(e.body ?? "");
  const status = /"message":"([^"]*)"/.exec(body)?.[1];
  return status ?? e.message ?? String(err);
}

/** The deployment of DDNNModel `name` in `namespace` (default: the kubeconfig context's, else "default"). */
export async function findDeployment(
  kubeconfig: string,
  name: string,
  namespaceFlag: string | undefined,
): Promise<Deployment> {
  const kc = new KubeConfig();
  try {
    kc.loadFromFile(kubeconfig);
  } catch (err) {
    throw new ConfigError(`--kubeconfig ${kubeconfig}: ${(err as Error).message}`);
  }
  const namespace =
    namespaceFlag ?? kc.getContextObject(kc.getCurrentContext())?.namespace ?? "default";
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  let model: DDNNModel;
  try {
    model = (await custom.getNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace,
      plural: PLURAL,
      name,
    })) as DDNNModel;
  } catch (err) {
    throw new ConfigError(
      `--kubeconfig: cannot read DDNNModel ${namespace}/${name}: ${kubeMessage(err)}`,
    );
  }
  const spec = model.spec;
  const status = model.status;
  const readyCondition = status?.conditions?.find((c) => c.type === "Ready");
  if (readyCondition?.status !== "True")
    throw new ConfigError(
      `DDNNModel ${namespace}/${name} is not Ready (${readyCondition ? `${readyCondition.reason ?? readyCondition.status}: ${readyCondition.message ?? ""}`.trim() : "no Ready condition yet"}): profile it once kubectl get ddnn shows it Ready`,
    );
  const digest = status?.bundleDigest;
  if (!digest) throw new ConfigError(`DDNNModel ${namespace}/${name} has no status.bundleDigest`);
  const notes: string[] = [];

  // The broker: the managed one's Pod, or the external URL the tiers use.
  let broker: string;
  let secured: Pick<
    Deployment,
    "brokerUsername" | "brokerPassword" | "brokerCa" | "brokerTlsName"
  > = {};
  if (spec.broker.managed) {
    const pods = await readyPods(core, model, "broker");
    if (pods.length === 0)
      throw new ConfigError(`DDNNModel ${namespace}/${name}: no Ready broker Pod`);
    const { tls, auth } = brokerSecurity(model);
    // The URL the tiers use, with the broker Pod's address for the Service's name.
    const service = new URL(brokerUrl(model));
    const url = new URL(service);
    url.hostname = pods[0]!.status!.podIP!;
    broker = url.toString().replace(/\/$/, "");
    notes.push(`broker: the managed Mosquitto Pod ${pods[0]!.metadata?.name} at ${broker}`);
    if (tls && auth) {
      // The profile's own identity (operator/broker-auth.ts) and the broker's CA, from Secrets.
      const data = async (secret: string) => {
        try {
          return (await core.readNamespacedSecret({ name: secret, namespace })).data ?? {};
        } catch (err) {
          throw new ConfigError(
            `--kubeconfig: cannot read Secret ${namespace}/${secret}: ${kubeMessage(err)}`,
          );
        }
      };
      const credentials = await data(brokerCredentialsSecretName(model));
      const ca = (await data(tls.secretName))["ca.crt"];
      const text = (b64: string | undefined, what: string) => {
        if (b64 === undefined) throw new ConfigError(`--kubeconfig: ${what} is missing`);
        return Buffer.from(b64, "base64").toString("utf8");
      };
      const caFile = join(mkdtempSync(join(tmpdir(), "ddnn-profile-ca-")), "ca.crt");
      writeFileSync(caFile, text(ca, `Secret ${namespace}/${tls.secretName} key ca.crt`));
      secured = {
        brokerUsername: text(credentials["profile.username"], "the profile's broker identity"),
        brokerPassword: text(credentials["profile.password"], "the profile's broker password"),
        brokerCa: caFile,
        // The certificate names the broker's Service; the profile reaches its Pod's address.
        brokerTlsName: service.hostname,
      };
      notes.push(
        `broker: TLS and the identity ${secured.brokerUsername} from Secret ${namespace}/${brokerCredentialsSecretName(model)}`,
      );
    }
  } else {
    const external = spec.broker.external!;
    if (external.secretRef || external.caConfigMap)
      throw new ConfigError(
        `DDNNModel ${namespace}/${name}: the external broker needs ${external.secretRef ? "credentials" : "a CA"} from the cluster, which --kubeconfig does not read; use --attach --broker ${external.url}${external.caConfigMap ? " --broker-ca FILE" : ""}`,
      );
    broker = external.url;
    notes.push(`broker: the model's external broker ${external.url}`);
  }

  const servers = await readyPods(core, model, "server");
  if (servers.length === 0)
    throw new ConfigError(`DDNNModel ${namespace}/${name}: no Ready server Pod`);
  const serverUrl = `http://${servers[0]!.status!.podIP}:${HTTP_PORT}`;
  notes.push(
    `server: ${servers.length} Ready Pod(s); Server Only (HTTP) goes to ${servers[0]!.metadata?.name} at ${serverUrl}, the Device&Server offloads to whichever the broker hands them`,
  );
  const edges = await readyPods(core, model, "edge");
  if (edges.length)
    notes.push(`edge: ${edges.length} Ready gateway Pod(s), reached through the broker`);
  const devices = await readyPods(core, model, "device");
  notes.push(
    `devices: the model's ${devices.length} Ready device agent Pod(s) (${devices.map((p) => `${p.metadata?.name} on ${p.spec?.nodeName}`).join(", ") || "none"}) keep running; the profile's own agents, with the model's bundle, thresholds and wire settings, replay the sample here against the same broker and server`,
  );

  // The bundle the tiers run: the ConfigMap's archive, or the URL.
  let bundle: string;
  if (spec.bundle.configMap) {
    const { name: cm, key } = spec.bundle.configMap;
    let data: string | undefined;
    try {
      data = (await core.readNamespacedConfigMap({ name: cm, namespace })).binaryData?.[key];
    } catch (err) {
      throw new ConfigError(
        `--kubeconfig: cannot read ConfigMap ${namespace}/${cm}: ${kubeMessage(err)}`,
      );
    }
    if (!data) throw new ConfigError(`ConfigMap ${namespace}/${cm} has no binaryData key ${key}`);
    bundle = join(mkdtempSync(join(tmpdir(), "ddnn-profile-bundle-")), "bundle.tar.gz");
    writeFileSync(bundle, Buffer.from(data, "base64"));
    notes.push(`bundle: ConfigMap ${namespace}/${cm} key ${key}, digest ${digest}`);
  } else {
    bundle = spec.bundle.url!;
    notes.push(`bundle: ${bundle}, digest ${digest}`);
  }
  const deviceStages = Object.entries(spec.placement)
    .filter(([, tier]) => tier === "device")
    .map(([stage]) => stage);
  if (deviceStages.length > 1)
    notes.push(
      `placement puts ${deviceStages.join(", ")} on the device; the profile's agents run the first stage only and offload the rest`,
    );
  return {
    model: `${namespace}/${name}`,
    broker,
    ...secured,
    serverUrl,
    bundle,
    bundleDigest: digest,
    threshold: { ...(spec.exits ?? {}) },
    ...(spec.wire?.dtype ? { dtype: spec.wire.dtype } : {}),
    ...(spec.wire?.compression ? { compression: spec.wire.compression } : {}),
    deadlineMs: spec.deadlineMs,
    notes,
  };
}
