/**
 * The operator's Pods start from what the operator writes: for every tier Pod the builders make
 * (server Deployment, edge Deployment, device DaemonSet), the container's args, environment
 * (secretKeyRef and fieldRef resolved to sample values) and mounted files are fed into the
 * program's own configuration loader, the one `ddnn server|gateway|agent` runs. A variable the
 * program does not read, a value its loader refuses, a required value that is missing, or a path
 * that no volume of the Pod provides fails the test.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { V1Container, V1EnvVar, V1PodSpec } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { loadTierConfig, type TierName, tierProgram } from "../cli/tiers.js";
import { ConfigError, PROXY_ENV } from "../core/config.js";
import { type BuildInput, buildOwnedObjects, type OwnedObject } from "../operator/builders.js";
import { type BundleFacts, planTiers } from "../operator/placement.js";
import type { DDNNModelSpecInput } from "../operator/spec.js";
import { DIGEST, exampleSpec, modelOf, THREE_STAGES } from "./operator/model-fixtures.js";
import { testBrokerCa } from "./support/broker-ca.js";
import { containerEnv } from "./support/container-env.js";

const TIER_COMMANDS: readonly string[] = ["server", "gateway", "agent"] satisfies TierName[];
/** Read by the bundle download (core/bundle/download.ts) in every tier, not by a program's fields. */
const PROXY_VARIABLES: readonly string[] = PROXY_ENV;

// --- the Pods the operator builds -----------------------------------------------------------

const images = { image: "ddnn-fog:9.9.9", brokerImage: "eclipse-mosquitto:2" };
const proxy = {
  HTTP_PROXY: "http://proxy.corp:3128",
  HTTPS_PROXY: "http://proxy.corp:3128",
  NO_PROXY: ".svc,10.0.0.0/8",
};

function variant(edit: (spec: DDNNModelSpecInput) => void): DDNNModelSpecInput {
  const spec = exampleSpec();
  edit(spec);
  return spec;
}

const fixtureSpecs: [string, DDNNModelSpecInput][] = [
  ["the example spec", exampleSpec()],
  [
    "only the required fields",
    { bundle: exampleSpec().bundle, placement: exampleSpec().placement },
  ],
  [
    "an external TLS broker with secretRef and caConfigMap",
    variant((s) => {
      s.broker = {
        external: {
          url: "mqtts://emqx:8883",
          secretRef: { name: "creds", passwordKey: "pw" },
          caConfigMap: { name: "emqx-ca", key: "root.pem" },
        },
      };
    }),
  ],
  [
    "a managed broker with TLS and per-tier identities (broker.managed.tls, broker.managed.auth)",
    variant((s) => {
      s.placement = { device: "edge", edge: "edge", server: "server" };
      s.broker = { managed: { tls: { secretName: "demo-tls" }, auth: { devices: ["cam-1"] } } };
    }),
  ],
  [
    "a managed broker with auth and device agents in the cluster (the token exchange)",
    variant((s) => {
      s.broker = { managed: { tls: { secretName: "demo-tls" }, auth: {} } };
    }),
  ],
  [
    "an insecure managed broker (broker.managed.insecure: anonymous plaintext, as before)",
    variant((s) => {
      s.broker = { managed: { insecure: true } };
    }),
  ],
  [
    "a ConfigMap bundle",
    variant((s) => {
      s.bundle = { configMap: { name: "demo-bundle" }, sha256: DIGEST };
    }),
  ],
  [
    "a replay source",
    variant((s) => {
      s.tiers!.device!.source = { replay: { path: "/data/fashion/t10k.idx" } };
    }),
  ],
  [
    "an MQTT source",
    variant((s) => {
      s.tiers!.device!.source = { mqtt: {} };
    }),
  ],
  [
    "f32 features without compression, the device's bundle cache on the node",
    variant((s) => {
      s.wire = { dtype: "f32", compression: "none" };
      s.tiers!.device!.bundleCache = { hostPath: "/var/lib/ddnn-fog" };
    }),
  ],
  [
    "server workers set",
    variant((s) => {
      s.tiers!.server!.batching = { workers: 3, maxBatch: 8, maxDelayMs: 0 };
    }),
  ],
  [
    "a multi-view bundle: one DaemonSet per view (one with its own replay file), the gateway fusing",
    {
      bundle: exampleSpec().bundle,
      placement: { device: "device", server: "server" },
      tiers: {
        device: {
          views: [{ view: 0 }, { view: 1, source: { replay: { path: "/data/view1.idx" } } }],
          captureSlotMs: 40,
        },
        edge: { fusionWindowMs: 80 },
      },
    },
  ],
  [
    "Server Only",
    variant((s) => {
      s.placement = { device: "server", edge: "server", server: "server" };
    }),
  ],
];

interface Case {
  readonly what: string;
  readonly spec: DDNNModelSpecInput;
  readonly name: string;
  readonly namespace: string;
}

/** Every DDNNModel under examples/ (GitOps bases included; kustomize gives those a namespace). */
function exampleModels(dir = join(import.meta.dirname, "..", "examples"), at = "examples"): Case[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry): Case[] => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return exampleModels(path, `${at}/${entry.name}`);
    if (!entry.name.endsWith(".yaml")) return [];
    return parseAllDocuments(readFileSync(path, "utf8"))
      .map(
        (d) =>
          d.toJS() as {
            kind?: string;
            metadata?: { name: string; namespace?: string };
            spec?: DDNNModelSpecInput;
          },
      )
      .filter((o) => o?.kind === "DDNNModel" && o.spec && o.metadata)
      .map((o) => ({
        what: `${at}/${entry.name} (${o.metadata!.name})`,
        spec: o.spec!,
        name: o.metadata!.name,
        namespace: o.metadata!.namespace ?? "fog",
      }));
  });
}

const cases: Case[] = [
  ...fixtureSpecs.map(([what, spec]) => ({ what, spec, name: "demo", namespace: "fog" })),
  ...exampleModels(),
];

/**
 * The bundle a spec places: its stages in placement order, each with an exit but the last, and
 * as many views as tiers.device.views places.
 */
function factsFor(spec: DDNNModelSpecInput): BundleFacts {
  const stages = Object.keys(spec.placement);
  const views = spec.tiers?.device?.views?.length;
  return { ...THREE_STAGES, stages, exits: stages.slice(0, -1), ...(views ? { views } : {}) };
}

function build({ spec, name, namespace }: Case): OwnedObject[] {
  const model = modelOf(spec, name, namespace);
  const facts = factsFor(spec);
  const plan = planTiers(model.spec, facts);
  if (!plan.ok) throw new Error(plan.message);
  const input: BuildInput = {
    model,
    bundle: facts,
    plan: plan.plan,
    images,
    proxy,
    brokerKey: new Uint8Array(32).fill(1),
    // The chart's operator: the device identity endpoint on (used by models with auth only).
    deviceIdentity: { url: "https://ddnn-fog-identity.ddnn-system.svc:8444", caPem: "PEM" },
    nodes: [{ name: NODE_NAME, labels: { "fog.ddnn.io/device": "true" } }],
    brokerCa: testBrokerCa,
  };
  return buildOwnedObjects(input);
}

/** The tier Pods among the owned objects (the broker runs Mosquitto, not a ddnn program). */
function tierPods(objects: OwnedObject[]): { what: string; pod: V1PodSpec }[] {
  return objects
    .filter(
      (o) =>
        (o.kind === "Deployment" || o.kind === "DaemonSet") &&
        !o.metadata!.name!.endsWith("-broker"),
    )
    .map((o) => ({
      what: `${o.kind}/${o.metadata!.name}`,
      pod: (o as { spec: { template: { spec: V1PodSpec } } }).spec.template.spec,
    }));
}

// --- what the kubelet would give the container ------------------------------------------------

const NODE_NAME = "odroid-7";
const POD_NAME = "pod-0";

/** A `valueFrom` as the container sees it: references resolved to sample values. */
function resolve(e: V1EnvVar): string {
  const from = e.valueFrom;
  if (from?.secretKeyRef) return `sample-${from.secretKeyRef.name}-${from.secretKeyRef.key}`;
  if (from?.configMapKeyRef)
    return `sample-${from.configMapKeyRef.name}-${from.configMapKeyRef.key}`;
  if (from?.fieldRef?.fieldPath === "spec.nodeName") return NODE_NAME;
  if (from?.fieldRef?.fieldPath === "metadata.namespace") return "fog";
  if (from?.fieldRef?.fieldPath === "metadata.name") return POD_NAME;
  throw new Error(`${e.name}: a reference this test cannot resolve: ${JSON.stringify(from)}`);
}

/** Files the container can open: every file of the Pod's volumes at its mount path. */
function mountedFiles(pod: V1PodSpec, c: V1Container): { files: Set<string>; dirs: Set<string> } {
  const files = new Set<string>();
  const dirs = new Set<string>();
  for (const m of c.volumeMounts ?? []) {
    const v = pod.volumes?.find((x) => x.name === m.name);
    if (!v) throw new Error(`volumeMount ${m.name} has no volume`);
    if (v.configMap) {
      // Without items every key of the ConfigMap is a file; the key the operator points at is the one
      // the DDNNModel names, so a mount without items provides it.
      for (const item of v.configMap.items ?? []) files.add(`${m.mountPath}/${item.path}`);
      if (!v.configMap.items) dirs.add(m.mountPath);
    } else if (v.hostPath?.type === "File") files.add(m.mountPath);
    else dirs.add(m.mountPath);
  }
  return { files, dirs };
}

function provides(mounted: { files: Set<string>; dirs: Set<string> }, path: string): boolean {
  // A file, or a directory the program is told to use (--bundle-cache), is on a volume.
  if (mounted.files.has(path) || mounted.dirs.has(path)) return true;
  return [...mounted.dirs].some((d) => path.startsWith(`${d}/`));
}

// --- the contract ----------------------------------------------------------------------------

/** Every promise a tier Pod breaks: one run shows all of them. */
function problemsOf(pods: { what: string; pod: V1PodSpec }[], name: string, namespace: string) {
  const problems: string[] = [];
  for (const { what, pod } of pods) {
    if (pod.containers.length !== 1) problems.push(`${what}: ${pod.containers.length} containers`);
    const c = pod.containers[0]!;
    const [command, ...argv] = c.args ?? [];
    if (command === undefined || !TIER_COMMANDS.includes(command)) {
      problems.push(`${what}: args ${JSON.stringify(c.args)} start no ddnn tier`);
      continue;
    }
    const tier = command as TierName;
    const reads = tierProgram(tier).envNames;
    const names = (c.env ?? []).map((e) => e.name);
    for (const [i, n] of names.entries())
      if (names.indexOf(n) !== i) problems.push(`${what}: ${n} is set twice`);
    // A variable only there for a later one's $(NAME) (the kubelet expands those) is read too.
    const { env, expanded } = containerEnv(c.env ?? [], resolve);
    for (const n of Object.keys(env))
      if (!reads.has(n) && !PROXY_VARIABLES.includes(n) && !expanded.has(n))
        problems.push(`${what}: sets ${n}, which \`ddnn ${command}\` does not read`);
    let config: Record<string, unknown>;
    try {
      // Only what the Pod sets: nothing of this process's environment leaks in.
      config = loadTierConfig(tier, argv, env);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(`${what}: \`ddnn ${command}\` refuses its Pod's configuration: ${err.message}`);
      continue;
    }
    // Every file the program is told to open is on a volume of the Pod.
    const mounted = mountedFiles(pod, c);
    for (const [key, value] of Object.entries(config))
      for (const path of [value].flat())
        if (typeof path === "string" && path.startsWith("/") && !provides(mounted, path))
          problems.push(`${what}: ${key} ${path} is on no volume of the Pod`);
    // What the Pod runs is what the DDNNModel asked for.
    if (config.bundleDigest !== DIGEST)
      problems.push(`${what}: bundleDigest ${config.bundleDigest}`);
    if (config.model !== `${namespace}/${name}`) problems.push(`${what}: model ${config.model}`);
    // A view's agent is named by its node and view, as one node may hold several views.
    const deviceId = config.view === undefined ? NODE_NAME : `${NODE_NAME}-view${config.view}`;
    if (command === "agent" && config.deviceId !== deviceId)
      problems.push(`${what}: deviceId ${config.deviceId}, not ${deviceId}`);
  }
  return problems;
}

describe("the Pods the operator builds start with what their program reads", () => {
  it.each(cases)("$what", (c) => {
    const pods = tierPods(build(c));
    expect(pods.length).toBeGreaterThan(0);
    expect(problemsOf(pods, c.name, c.namespace)).toEqual([]);
  });

  it("would see a variable no program reads, a refused or missing value, an unmounted file", () => {
    const server = () => {
      const pods = tierPods(build(cases[0]!)).filter((p) => p.what === "Deployment/demo-server");
      return { pods, c: pods[0]!.pod.containers[0]! };
    };
    const broken: [string, (c: V1Container) => void, RegExp][] = [
      [
        "unread",
        (c) => c.env!.push({ name: "DDNN_DEADLINE_MS", value: "250" }),
        /sets DDNN_DEADLINE_MS, which `ddnn server` does not read/,
      ],
      [
        "refused",
        (c) => {
          c.env!.find((e) => e.name === "DDNN_MAX_BATCH")!.value = "0";
        },
        /refuses its Pod's configuration: DDNN_MAX_BATCH: must be at least 1/,
      ],
      [
        "missing",
        (c) => {
          c.env = c.env!.filter((e) => e.name !== "DDNN_BUNDLE");
        },
        /refuses its Pod's configuration: --bundle \/ DDNN_BUNDLE: is required/,
      ],
      [
        "unmounted",
        (c) => c.env!.push({ name: "DDNN_BROKER_CA", value: "/etc/ddnn/elsewhere/ca.pem" }),
        /brokerCa \/etc\/ddnn\/elsewhere\/ca.pem is on no volume/,
      ],
    ];
    for (const [what, edit, found] of broken) {
      const { pods, c } = server();
      edit(c);
      expect(problemsOf(pods, "demo", "fog").join("\n"), what).toMatch(found);
    }
  });
});

describe("the operator names no variable itself", () => {
  it("operator/builders.ts takes every environment name from the programs' fields", () => {
    const source = readFileSync(join(import.meta.dirname, "..", "operator", "builders.ts"), "utf8");
    const names = [...source.matchAll(/["'`](DDNN_[A-Z0-9_]+|[A-Z]+_PROXY)["'`]/g)].map(
      (m) => m[1],
    );
    expect(names).toEqual([]);
  });
});
