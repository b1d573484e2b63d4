import { createPrivateKey, X509Certificate } from "node:crypto";
import type {
  V1ConfigMap,
  V1DaemonSet,
  V1Deployment,
  V1EnvVar,
  V1PodSpec,
  V1Secret,
} from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { loadTierConfig } from "../cli/tiers.js";
import {
  buildInput,
  chartOperator,
  DIGEST,
  exampleSpec,
  modelOf,
  THREE_STAGES,
} from "../test/operator/model-fixtures.js";
import { testBrokerCa } from "../test/support/broker-ca.js";
import {
  BROKER_CERT_DAYS,
  BROKER_CERT_RENEW_DAYS,
  type BuildInput,
  buildOwnedObjects,
  buildServerDeployment,
  MOSQUITTO_CONF,
  proxyEnvForPods,
} from "./builders.js";
import { planTiers } from "./placement.js";
import type { DDNNModelSpecInput } from "./spec.js";
import { createCertificateAuthority } from "./x509.js";

const input = (spec: DDNNModelSpecInput = exampleSpec(), facts = THREE_STAGES): BuildInput =>
  buildInput(spec, facts);

function envOf(w: V1Deployment | V1DaemonSet): Record<string, string | V1EnvVar["valueFrom"]> {
  return Object.fromEntries(
    (w.spec!.template.spec!.containers[0]!.env ?? []).map((e) => [e.name, e.value ?? e.valueFrom]),
  );
}

/** The Pod specs of the server, edge and device workloads. */
function tierPods(objs: readonly { kind?: string; metadata?: { name?: string } }[]) {
  const pod = (name: string) =>
    (objs.find((o) => o.metadata!.name === name && o.kind !== "Service") as V1Deployment).spec!
      .template.spec!;
  return { device: pod("demo-device"), edge: pod("demo-edge"), server: pod("demo-server") };
}

/** Whether the scheduler may put the Pod on a node with these labels (selector and required affinity). */
function schedulable(pod: V1PodSpec, labels: Record<string, string>): boolean {
  const selector = Object.entries(pod.nodeSelector ?? {}).every(([k, v]) => labels[k] === v);
  const terms =
    pod.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms;
  const affinity =
    !terms ||
    terms.some((t) =>
      (t.matchExpressions ?? []).every((e) => {
        if (e.operator !== "In") throw new Error(`operator ${e.operator} not modelled`);
        return e.values!.includes(labels[e.key] ?? "\u0000");
      }),
    );
  return selector && affinity;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === "object") {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

describe("builders", () => {
  it("build the broker, server, edge and device objects of the example", () => {
    const objs = buildOwnedObjects(input());
    expect(objs.map((o) => `${o.kind}/${o.metadata!.name}`)).toEqual([
      "ConfigMap/demo-broker",
      "Deployment/demo-broker",
      "Service/demo-broker",
      // Secure by default: the password file and ACL, the identities, the issued certificate,
      // and the identity endpoint's CA for the device agents.
      "Secret/demo-broker-auth",
      "Secret/demo-broker-credentials",
      "Secret/demo-broker-cert",
      "ConfigMap/demo-identity-ca",
      "Deployment/demo-server",
      "Service/demo-server",
      "Deployment/demo-edge",
      "DaemonSet/demo-device",
    ]);
    for (const o of objs) {
      expect(o.metadata!.namespace).toBe("fog");
      expect(o.metadata!.ownerReferences).toEqual([
        {
          apiVersion: "fog.ddnn.io/v1alpha1",
          kind: "DDNNModel",
          name: "demo",
          uid: "uid-1234",
          controller: true,
          blockOwnerDeletion: true,
        },
      ]);
      expect(o.metadata!.labels).toMatchObject({
        "app.kubernetes.io/managed-by": "ddnn-operator",
        "fog.ddnn.io/model": "demo",
      });
    }
  });

  it("give the server tier its stages, batching and broker through its environment", () => {
    const d = buildServerDeployment(input());
    expect(d.spec!.replicas).toBe(2);
    expect(d.spec!.selector.matchLabels).toEqual({
      "fog.ddnn.io/model": "demo",
      "app.kubernetes.io/component": "server",
    });
    const c = d.spec!.template.spec!.containers[0]!;
    expect(c.image).toBe("ddnn-fog:9.9.9");
    expect(c.args).toEqual(["server"]);
    expect(c.resources).toEqual({ requests: { cpu: "250m", memory: "256Mi" } });
    expect(c.readinessProbe!.httpGet!.path).toBe("/readyz");
    expect(c.livenessProbe!.httpGet!.path).toBe("/healthz");
    expect(envOf(d)).toEqual({
      DDNN_MODEL: "fog/demo",
      DDNN_BUNDLE: "http://models.fog.svc/demo.tar.gz",
      DDNN_BUNDLE_DIGEST: DIGEST,
      DDNN_BUNDLE_CACHE: "/var/cache/ddnn/bundles",
      DDNN_STAGES: "server",
      // TLS and the server's own identity, by default; the password only as a reference.
      DDNN_BROKER_URL: "mqtts://demo-broker.fog.svc:8883",
      DDNN_BROKER_USERNAME: {
        secretKeyRef: { name: "demo-broker-credentials", key: "server.username" },
      },
      DDNN_BROKER_PASSWORD: {
        secretKeyRef: { name: "demo-broker-credentials", key: "server.password" },
      },
      DDNN_BROKER_CA: "/etc/ddnn/broker-ca/ca.crt",
      DDNN_HTTP_PORT: "8080",
      DDNN_MAX_BATCH: "32",
      DDNN_MAX_DELAY_MS: "2",
    });
  });

  it("give the server and edge Pods the spec's admission limits, read by the programs themselves", () => {
    const spec = exampleSpec();
    spec.tiers = {
      ...spec.tiers,
      server: { ...spec.tiers!.server, admission: { maxQueue: 64, maxInFlightPerClient: 8 } },
      edge: { ...spec.tiers!.edge, admission: { maxInFlightPerClient: 0 } },
    };
    const objs = buildOwnedObjects(input(spec));
    const workload = (name: string) =>
      objs.find((o) => o.metadata!.name === name && o.kind === "Deployment") as V1Deployment;
    const plain = (w: V1Deployment) =>
      Object.fromEntries(
        Object.entries(envOf(w)).filter(([, v]) => typeof v === "string"),
      ) as Record<string, string>;
    const server = plain(workload("demo-server"));
    const edge = plain(workload("demo-edge"));
    expect(server).toMatchObject({ DDNN_MAX_QUEUE: "64", DDNN_MAX_IN_FLIGHT_PER_CLIENT: "8" });
    expect(edge.DDNN_MAX_QUEUE).toBeUndefined();
    expect(edge.DDNN_MAX_IN_FLIGHT_PER_CLIENT).toBe("0");
    const serverCfg = loadTierConfig("server", [], server);
    expect([serverCfg.maxQueue, serverCfg.maxInFlightPerClient]).toEqual([64, 8]);
    // The edge keeps its own queue default (512) and has no per-client limit.
    const edgeCfg = loadTierConfig("gateway", [], edge);
    expect([edgeCfg.maxQueue, edgeCfg.maxInFlightPerClient]).toEqual([512, 0]);
  });

  it("give each tier only its own stages' thresholds", () => {
    const objs = buildOwnedObjects(input());
    const edge = objs.find((o) => o.metadata!.name === "demo-edge") as V1Deployment;
    const device = objs.find((o) => o.kind === "DaemonSet") as V1DaemonSet;
    expect(envOf(edge)).toMatchObject({ DDNN_STAGES: "edge", DDNN_THRESHOLDS: "edge=0.3" });
    expect(envOf(device)).toMatchObject({ DDNN_STAGES: "device", DDNN_THRESHOLDS: "device=0.4" });
    expect(edge.spec!.template.spec!.containers[0]!.args).toEqual(["gateway"]);
  });

  it("run device agents on every device node, amd64, arm64 or 32-bit arm, named after the node", () => {
    const device = buildOwnedObjects(input()).find((o) => o.kind === "DaemonSet") as V1DaemonSet;
    const pod = device.spec!.template.spec!;
    expect(pod.nodeSelector).toEqual({ "fog.ddnn.io/device": "true" });
    expect(pod.tolerations).toEqual([
      { key: "fog.ddnn.io/device", operator: "Exists", effect: "NoSchedule" },
    ]);
    const terms = pod.affinity!.nodeAffinity!.requiredDuringSchedulingIgnoredDuringExecution!;
    expect(terms.nodeSelectorTerms[0]!.matchExpressions).toContainEqual({
      key: "kubernetes.io/arch",
      operator: "In",
      values: ["amd64", "arm64", "arm"],
    });
    const c = pod.containers[0]!;
    expect(c.args).toEqual(["agent"]);
    expect(c.ports).toEqual([
      { name: "http", containerPort: 8080, protocol: "TCP", hostPort: 8080 },
    ]);
    expect(envOf(device)).toMatchObject({
      DDNN_SOURCE: "http",
      DDNN_DEVICE_ID: { fieldRef: { apiVersion: "v1", fieldPath: "spec.nodeName" } },
      // Only the device waits for upstream; the server and gateway do not read a deadline.
      DDNN_DEADLINE_MS: "250",
    });
  });

  it("select nodes by one label per tier by default, so one node may serve several tiers", () => {
    const spec = exampleSpec();
    spec.tiers = {}; // every default
    const pods = tierPods(buildOwnedObjects(input(spec)));
    expect(pods.device.nodeSelector).toEqual({ "fog.ddnn.io/device": "true" });
    expect(pods.edge.nodeSelector).toEqual({ "fog.ddnn.io/edge": "true" });
    expect(pods.server.nodeSelector).toBeUndefined();
    expect(
      pods.server.affinity!.nodeAffinity!.preferredDuringSchedulingIgnoredDuringExecution,
    ).toEqual([
      {
        weight: 50,
        preference: {
          matchExpressions: [{ key: "fog.ddnn.io/server", operator: "In", values: ["true"] }],
        },
      },
    ]);
    const board = { "kubernetes.io/arch": "arm64", "kubernetes.io/os": "linux" };
    // One node labelled for every tier runs all of them (a one-node lab, a camera that is a gateway).
    const everything = {
      ...board,
      "fog.ddnn.io/device": "true",
      "fog.ddnn.io/edge": "true",
      "fog.ddnn.io/server": "true",
    };
    for (const pod of Object.values(pods)) expect(schedulable(pod, everything)).toBe(true);
    const camera = { ...board, "fog.ddnn.io/device": "true" };
    expect(schedulable(pods.device, camera)).toBe(true);
    expect(schedulable(pods.edge, camera)).toBe(false);
    // The server prefers server nodes but needs none: any linux amd64/arm64 node will do.
    expect(schedulable(pods.server, board)).toBe(true);
    expect(schedulable(pods.server, { ...board, "kubernetes.io/arch": "s390x" })).toBe(false);
    // A 32-bit ARM board (Odroid-XU4) runs a device agent or a gateway (on WebAssembly), never the
    // server, which needs onnxruntime-node's speed.
    const xu4 = { ...everything, "kubernetes.io/arch": "arm" };
    expect(schedulable(pods.device, xu4)).toBe(true);
    expect(schedulable(pods.edge, xu4)).toBe(true);
    expect(schedulable(pods.server, xu4)).toBe(false);
  });

  it("keep user-given node selectors and tolerations, and add what an edge cluster needs", () => {
    const spec = exampleSpec();
    spec.tiers = {
      device: { nodeSelector: { "fog.ddnn.io/tier": "device" } },
      edge: {
        nodeSelector: { zone: "plant-3" },
        tolerations: [{ key: "fog.ddnn.io/gateway", operator: "Exists", effect: "NoSchedule" }],
      },
      server: {
        nodeSelector: { "node-role.kubernetes.io/server": "" },
        tolerations: [
          {
            key: "node.kubernetes.io/unreachable",
            operator: "Exists",
            effect: "NoExecute",
            tolerationSeconds: 5,
          },
        ],
      },
    };
    const pods = tierPods(buildOwnedObjects(input(spec)));
    expect(pods.device.nodeSelector).toEqual({ "fog.ddnn.io/tier": "device" });
    expect(pods.edge.nodeSelector).toEqual({ zone: "plant-3" });
    expect(pods.server.nodeSelector).toEqual({ "node-role.kubernetes.io/server": "" });
    // The user's own first; a node problem the user tolerates keeps the user's seconds.
    expect(pods.edge.tolerations).toEqual([
      { key: "fog.ddnn.io/gateway", operator: "Exists", effect: "NoSchedule" },
      {
        key: "node.kubernetes.io/unreachable",
        operator: "Exists",
        effect: "NoExecute",
        tolerationSeconds: 600,
      },
      {
        key: "node.kubernetes.io/not-ready",
        operator: "Exists",
        effect: "NoExecute",
        tolerationSeconds: 600,
      },
    ]);
    expect(pods.server.tolerations).toEqual([
      {
        key: "node.kubernetes.io/unreachable",
        operator: "Exists",
        effect: "NoExecute",
        tolerationSeconds: 5,
      },
      {
        key: "node.kubernetes.io/not-ready",
        operator: "Exists",
        effect: "NoExecute",
        tolerationSeconds: 60,
      },
    ]);
    // A DaemonSet's Pods stay on their node anyway: devices get only what the user gives.
    expect(pods.device.tolerations).toBeUndefined();
    // "Tolerate everything" covers the node problems too.
    spec.tiers.server!.tolerations = [{ operator: "Exists" }];
    expect(tierPods(buildOwnedObjects(input(spec))).server.tolerations).toEqual([
      { operator: "Exists" },
    ]);
  });

  it("configure the managed broker with TCP_NODELAY, TLS only and no anonymous client by default", () => {
    const objs = buildOwnedObjects(input());
    const cm = objs.find((o) => o.kind === "ConfigMap")!;
    const conf = (cm as { data: Record<string, string> }).data["mosquitto.conf"]!;
    expect(conf).toMatch(/^set_tcp_nodelay true$/m);
    expect(conf).toMatch(/^listener 8883$/m);
    expect(conf).not.toMatch(/^listener 1883$/m);
    expect(conf).toMatch(/^allow_anonymous false$/m);
    expect(conf).toMatch(/^certfile \/mosquitto\/tls\/tls.crt$/m);
    expect(MOSQUITTO_CONF).toMatch(/^set_tcp_nodelay true$/m);
    expect(MOSQUITTO_CONF).toMatch(/^listener 1883$/m);
    const broker = objs.find(
      (o) => o.metadata!.name === "demo-broker" && o.kind === "Deployment",
    ) as V1Deployment;
    expect(broker.spec!.template.spec!.containers[0]!.image).toBe("eclipse-mosquitto:2");
    expect(broker.spec!.strategy).toEqual({ type: "Recreate" });
  });

  it("reference an external broker's Secret and never copy a credential", () => {
    const spec = exampleSpec();
    spec.broker = {
      external: { url: "mqtts://emqx:8883", secretRef: { name: "creds", passwordKey: "pw" } },
    };
    const objs = buildOwnedObjects(input(spec));
    expect(objs.some((o) => o.metadata!.name === "demo-broker")).toBe(false);
    const server = objs.find(
      (o) => o.metadata!.name === "demo-server" && o.kind === "Deployment",
    ) as V1Deployment;
    expect(envOf(server)).toMatchObject({
      DDNN_BROKER_URL: "mqtts://emqx:8883",
      DDNN_BROKER_USERNAME: { secretKeyRef: { name: "creds", key: "username" } },
      DDNN_BROKER_PASSWORD: { secretKeyRef: { name: "creds", key: "pw" } },
    });
    // TLS and credentials: nothing insecure for the tiers to be told to accept.
    expect(envOf(server)).not.toHaveProperty("DDNN_INSECURE");
    spec.broker = { external: { url: "mqtt://mosquitto.lab:1883", secretRef: { name: "creds" } } };
    const plain = buildOwnedObjects(input(spec)).find(
      (o) => o.metadata!.name === "demo-server" && o.kind === "Deployment",
    ) as V1Deployment;
    expect(envOf(plain)).toMatchObject({ DDNN_INSECURE: "true" });
  });

  it("mount an external broker's CA ConfigMap in every tier and point DDNN_BROKER_CA at it", () => {
    const spec = exampleSpec();
    spec.broker = {
      external: { url: "mqtts://emqx:8883", caConfigMap: { name: "emqx-ca", key: "root.pem" } },
    };
    const objs = buildOwnedObjects(input(spec));
    const pods = objs.flatMap((o) =>
      o.kind === "Deployment" || o.kind === "DaemonSet"
        ? [(o as V1Deployment).spec!.template.spec!]
        : [],
    );
    expect(pods.length).toBeGreaterThan(1);
    for (const pod of pods) {
      const c = pod.containers[0]!;
      expect(c.env).toContainEqual({
        name: "DDNN_BROKER_CA",
        value: "/etc/ddnn/broker-ca/root.pem",
      });
      expect(c.volumeMounts).toContainEqual({
        name: "broker-ca",
        mountPath: "/etc/ddnn/broker-ca",
        readOnly: true,
      });
      expect(pod.volumes).toContainEqual({
        name: "broker-ca",
        configMap: { name: "emqx-ca", items: [{ key: "root.pem", path: "root.pem" }] },
      });
    }
    // Without one, nothing is mounted and the image's CAs apply.
    const plain = buildServerDeployment(
      input({ ...exampleSpec(), broker: { external: { url: "mqtts://emqx:8883" } } }),
    );
    expect(envOf(plain).DDNN_BROKER_CA).toBeUndefined();
  });

  it("give every tier of a bundle URL a cache of the verified bundle; a device's may be a node directory", () => {
    const volumeOf = (o: V1Deployment | V1DaemonSet) => {
      const pod = o.spec!.template.spec!;
      const mount = pod.containers[0]!.volumeMounts!.find((m) => m.name === "bundle-cache");
      return { mount, volume: pod.volumes!.find((v) => v.name === "bundle-cache") };
    };
    const tiers = (spec: DDNNModelSpecInput) =>
      buildOwnedObjects(input(spec)).filter(
        (o): o is V1Deployment | V1DaemonSet =>
          (o.kind === "Deployment" || o.kind === "DaemonSet") && o.metadata!.name !== "demo-broker",
      );
    const byUrl = tiers(exampleSpec());
    expect(byUrl.map((o) => o.metadata!.name).sort()).toEqual([
      "demo-device",
      "demo-edge",
      "demo-server",
    ]);
    for (const o of byUrl) {
      expect(envOf(o).DDNN_BUNDLE_CACHE).toBe("/var/cache/ddnn/bundles");
      expect(volumeOf(o)).toEqual({
        mount: { name: "bundle-cache", mountPath: "/var/cache/ddnn/bundles" },
        volume: { name: "bundle-cache", emptyDir: { sizeLimit: "256Mi" } },
      });
    }
    const spec = exampleSpec();
    spec.tiers = { ...spec.tiers, device: { bundleCache: { hostPath: "/var/lib/ddnn-fog" } } };
    const onNode = tiers(spec);
    expect(volumeOf(onNode.find((o) => o.kind === "DaemonSet")!).volume).toEqual({
      name: "bundle-cache",
      hostPath: { path: "/var/lib/ddnn-fog", type: "DirectoryOrCreate" },
    });
    // Only the device's: the edge and server keep an emptyDir.
    for (const o of onNode.filter((o) => o.kind === "Deployment"))
      expect(volumeOf(o).volume?.emptyDir).toBeDefined();
    // A bundle from a ConfigMap is on the node already (the kubelet keeps it): no cache.
    const fromConfigMap = tiers({
      ...exampleSpec(),
      bundle: { configMap: { name: "b" }, sha256: DIGEST },
    });
    for (const o of fromConfigMap) {
      expect(envOf(o).DDNN_BUNDLE_CACHE).toBeUndefined();
      expect(volumeOf(o).volume).toBeUndefined();
    }
  });

  it("give spec.wire to the tiers that send features (device, edge), not to the server", () => {
    const objs = (spec: DDNNModelSpecInput): Record<string, Record<string, string | undefined>> =>
      Object.fromEntries(
        buildOwnedObjects(input(spec))
          .filter((o) => o.kind === "Deployment" || o.kind === "DaemonSet")
          .map((o) => [o.metadata!.name, envOf(o as V1Deployment)]),
      );
    const wired = objs({ ...exampleSpec(), wire: { dtype: "f32", compression: "none" } });
    for (const name of ["demo-device", "demo-edge"])
      expect(wired[name]).toMatchObject({ DDNN_DTYPE: "f32", DDNN_COMPRESSION: "none" });
    expect(wired["demo-server"]?.DDNN_DTYPE).toBeUndefined();
    expect(wired["demo-server"]?.DDNN_COMPRESSION).toBeUndefined();
    // Unset: the tiers' own defaults, nothing written.
    const plain = objs(exampleSpec());
    for (const e of Object.values(plain)) {
      expect(e.DDNN_DTYPE).toBeUndefined();
      expect(e.DDNN_COMPRESSION).toBeUndefined();
    }
    const half = objs({ ...exampleSpec(), wire: { dtype: "f16" } });
    expect(half["demo-device"]).toMatchObject({ DDNN_DTYPE: "f16" });
    expect(half["demo-device"]?.DDNN_COMPRESSION).toBeUndefined();
  });

  it("give every tier the operator's proxy, never one with credentials", () => {
    const { proxy, skipped } = proxyEnvForPods({
      https_proxy: "http://proxy.corp:3128",
      HTTP_PROXY: "http://user:secret@proxy.corp:3128",
      NO_PROXY: ".svc,10.0.0.0/8",
    });
    expect(proxy).toEqual({ HTTPS_PROXY: "http://proxy.corp:3128", NO_PROXY: ".svc,10.0.0.0/8" });
    expect(skipped).toEqual(["HTTP_PROXY"]);
    const objs = buildOwnedObjects({ ...input(), proxy });
    const workloads = objs.filter((o) => o.kind === "Deployment" || o.kind === "DaemonSet");
    const tiers = workloads.filter((w) => !w.metadata!.name!.endsWith("-broker"));
    expect(tiers).toHaveLength(3);
    for (const w of tiers) {
      const env = envOf(w as V1Deployment);
      expect([env.HTTPS_PROXY, env.NO_PROXY, env.HTTP_PROXY]).toEqual([
        "http://proxy.corp:3128",
        ".svc,10.0.0.0/8",
        undefined,
      ]);
    }
    expect(JSON.stringify(objs)).not.toContain("secret@");
    // Without proxy settings nothing is added.
    expect(envOf(buildServerDeployment(input())).HTTPS_PROXY).toBeUndefined();
  });

  it("mount a ConfigMap-held bundle", () => {
    const spec = exampleSpec();
    spec.bundle = { configMap: { name: "demo-bundle" }, sha256: DIGEST };
    const server = buildServerDeployment(input(spec));
    expect(envOf(server).DDNN_BUNDLE).toBe("/var/lib/ddnn/bundle/bundle.tar.gz");
    expect(server.spec!.template.spec!.volumes).toContainEqual({
      name: "bundle",
      configMap: { name: "demo-bundle" },
    });
  });

  it("put every stage on the server for Server Only, with no edge or device workload", () => {
    const spec = exampleSpec();
    spec.placement = { device: "server", edge: "server", server: "server" };
    const objs = buildOwnedObjects(input(spec));
    expect(objs.map((o) => `${o.kind}/${o.metadata!.name}`)).toEqual([
      "ConfigMap/demo-broker",
      "Deployment/demo-broker",
      "Service/demo-broker",
      "Secret/demo-broker-auth",
      "Secret/demo-broker-credentials",
      "Secret/demo-broker-cert",
      "Deployment/demo-server",
      "Service/demo-server",
    ]);
    expect(envOf(objs[6] as V1Deployment)).toMatchObject({
      DDNN_STAGES: "device,edge,server",
      DDNN_THRESHOLDS: "device=0.4,edge=0.3",
    });
  });

  it("read replayed inputs from the node for a replay source", () => {
    const spec = exampleSpec();
    spec.tiers!.device!.source = { replay: { path: "/data/fashion/t10k.idx" } };
    const device = buildOwnedObjects(input(spec)).find(
      (o) => o.kind === "DaemonSet",
    ) as V1DaemonSet;
    expect(envOf(device)).toMatchObject({
      DDNN_SOURCE: "replay",
      DDNN_REPLAY_PATH: "/data/fashion/t10k.idx",
    });
    expect(device.spec!.template.spec!.volumes).toContainEqual({
      name: "replay",
      hostPath: { path: "/data/fashion/t10k.idx", type: "File" },
    });
    expect(device.spec!.template.spec!.containers[0]!.ports![0]!.hostPort).toBeUndefined();
  });

  it("are pure: the same input gives the same objects and is not changed", () => {
    // The one thing made afresh is the broker's certificate, so the input holds the current one.
    const first = input();
    const currentBrokerCert = certSecret(buildOwnedObjects(first));
    const { brokerKey, brokerCa, ...rest } = { ...input(), currentBrokerCert };
    const frozen = { ...deepFreeze(rest), brokerKey, brokerCa };
    expect(buildOwnedObjects(frozen)).toEqual(buildOwnedObjects({ ...input(), currentBrokerCert }));
  });
});

const certSecret = (objs: readonly { kind?: string; metadata?: { name?: string } }[]) =>
  objs.find((o) => o.kind === "Secret" && o.metadata!.name === "demo-broker-cert") as V1Secret;
const pemOf = (secret: V1Secret, key: string) =>
  Buffer.from(secret.data![key]!, "base64").toString("utf8");

describe("the managed broker's certificate, issued by the operator's CA", () => {
  it("names the broker's Service, chains to the CA, and is kept while good", () => {
    const at = new Date("2026-12-01T00:00:00Z");
    const secret = certSecret(buildOwnedObjects({ ...input(), now: at }));
    expect(secret.type).toBe("kubernetes.io/tls");
    const cert = new X509Certificate(pemOf(secret, "tls.crt"));
    const ca = new X509Certificate(testBrokerCa.certPem);
    expect(cert.subjectAltName).toBe(
      "DNS:demo-broker.fog.svc, DNS:demo-broker.fog, DNS:demo-broker",
    );
    expect(cert.checkIssued(ca)).toBe(true);
    expect(cert.verify(ca.publicKey)).toBe(true);
    expect(cert.checkPrivateKey(createPrivateKey(pemOf(secret, "tls.key")))).toBe(true);
    expect(cert.ca).toBe(false);
    expect(new Date(cert.validTo).getTime() - at.getTime()).toBe(BROKER_CERT_DAYS * 86_400_000);
    expect(pemOf(secret, "ca.crt")).toBe(testBrokerCa.certPem);
    // Until 30 days before its end a reconcile keeps it (it writes nothing); then it renews.
    const later = (days: number) => new Date(at.getTime() + days * 86_400_000);
    const again = (now: Date, extra: Partial<BuildInput> = {}) =>
      certSecret(buildOwnedObjects({ ...input(), now, currentBrokerCert: secret, ...extra }));
    expect(again(later(BROKER_CERT_DAYS - BROKER_CERT_RENEW_DAYS - 1))).toEqual(secret);
    const renewed = again(later(BROKER_CERT_DAYS - BROKER_CERT_RENEW_DAYS + 1));
    expect(renewed.data!["tls.crt"]).not.toBe(secret.data!["tls.crt"]);
    expect(renewed.data!["tls.key"]).not.toBe(secret.data!["tls.key"]);
    // A new CA: a new certificate, and the tiers get the new CA with it.
    const other = createCertificateAuthority("another CA", at, 30);
    const rotated = again(later(1), {
      brokerCa: { certPem: other.certPem, key: createPrivateKey(other.keyPem) },
    });
    expect(pemOf(rotated, "ca.crt")).toBe(other.certPem);
    expect(
      new X509Certificate(pemOf(rotated, "tls.crt")).checkIssued(
        new X509Certificate(other.certPem),
      ),
    ).toBe(true);
    // A damaged Secret is replaced, not trusted.
    const damaged = {
      ...secret,
      data: { ...secret.data, "tls.crt": Buffer.from("junk").toString("base64") },
    };
    expect(again(later(1), { currentBrokerCert: damaged }).data!["tls.crt"]).not.toBe(
      damaged.data["tls.crt"],
    );
  });

  it("without the operator's CA the model is not built, and the error says what to do", () => {
    const { brokerCa: _, ...noCa } = input();
    expect(() => buildOwnedObjects(noCa)).toThrow(
      /operator's broker CA \(DDNN_BROKER_CA_DIR.*broker\.managed\.tls\.secretName.*insecure/,
    );
    // With a certificate of its own (cert-manager's) it needs no CA.
    const spec = exampleSpec();
    spec.broker = { managed: { tls: { secretName: "demo-tls" } } };
    const own = buildOwnedObjects({ ...noCa, ...input(spec), brokerCa: undefined });
    expect(own.some((o) => o.metadata!.name === "demo-broker-cert")).toBe(false);
  });
});

describe("planTiers", () => {
  const facts = THREE_STAGES;
  it("splits stages by tier in bundle order", () => {
    const r = planTiers(
      { placement: { device: "device", edge: "server", server: "server" } },
      facts,
    );
    expect(r).toEqual({
      ok: true,
      plan: { device: ["device"], edge: [], server: ["edge", "server"] },
    });
  });
  it.each([
    [{ device: "device", edge: "edge", server: "server", extra: "server" }, {}, "does not have"],
    [{ device: "device", server: "server" }, {}, "does not place bundle stage(s) edge"],
    [{ device: "device", edge: "edge", server: "server" }, { server: 0.2 }, "have no exit"],
    [
      { device: "edge", edge: "device", server: "server" },
      {},
      "data flows device -> edge -> server",
    ],
  ] as const)("refuses %j with exits %j", (placement, exits, message) => {
    const r = planTiers({ placement, exits }, facts);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.message).toContain(message);
  });
});

describe("managed broker with broker.managed.tls and broker.managed.auth", () => {
  const secured = (): DDNNModelSpecInput => ({
    ...exampleSpec(),
    placement: { device: "edge", edge: "edge", server: "server" },
    exits: { device: 0.4, edge: 0.3 },
    broker: { managed: { tls: { secretName: "demo-tls" }, auth: { devices: ["cam-1"] } } },
  });
  const key = new Uint8Array(32).fill(7);
  const secure = (spec = secured()) => ({ ...input(spec), brokerKey: key });

  it("listens with TLS on 8883 only, from the Secret's tls.crt and tls.key, and refuses anonymous clients", () => {
    const objs = buildOwnedObjects(secure());
    const cm = objs.find((o) => o.kind === "ConfigMap") as { data: Record<string, string> };
    const conf = cm.data["mosquitto.conf"]!;
    expect(conf).toMatch(/^listener 8883$/m);
    expect(conf).not.toMatch(/^listener 1883/m);
    expect(conf).toMatch(/^certfile \/mosquitto\/tls\/tls.crt$/m);
    expect(conf).toMatch(/^allow_anonymous false$/m);
    expect(conf).toMatch(/^acl_file \/mosquitto\/auth\/acl$/m);
    expect(conf).toMatch(/^set_tcp_nodelay true$/m);
    const broker = objs.find(
      (o) => o.kind === "Deployment" && o.metadata!.name === "demo-broker",
    ) as V1Deployment;
    const pod = broker.spec!.template.spec!;
    expect(pod.volumes).toContainEqual({
      name: "tls",
      secret: {
        secretName: "demo-tls",
        items: [
          { key: "tls.crt", path: "tls.crt" },
          { key: "tls.key", path: "tls.key" },
        ],
      },
    });
    expect(pod.volumes).toContainEqual({
      name: "auth",
      secret: { secretName: "demo-broker-auth" },
    });
    expect(pod.containers[0]!.ports).toEqual([
      { name: "mqtt", containerPort: 8883, protocol: "TCP" },
    ]);
    expect(pod.containers[0]!.args![0]).toBe("sh");
  });

  it("gives the server and gateway their own identity by reference, mqtts:// and the Secret's CA; no DDNN_INSECURE", () => {
    const objs = buildOwnedObjects(secure());
    for (const tier of ["server", "edge"] as const) {
      const d = objs.find(
        (o) => o.kind === "Deployment" && o.metadata!.name === `demo-${tier}`,
      ) as V1Deployment;
      expect(envOf(d)).toMatchObject({
        DDNN_BROKER_URL: "mqtts://demo-broker.fog.svc:8883",
        DDNN_BROKER_CA: "/etc/ddnn/broker-ca/ca.crt",
        DDNN_BROKER_USERNAME: {
          secretKeyRef: { name: "demo-broker-credentials", key: `${tier}.username` },
        },
        DDNN_BROKER_PASSWORD: {
          secretKeyRef: { name: "demo-broker-credentials", key: `${tier}.password` },
        },
      });
      expect(envOf(d)).not.toHaveProperty("DDNN_INSECURE");
      expect(d.spec!.template.spec!.volumes).toContainEqual({
        name: "broker-ca",
        secret: { secretName: "demo-tls", items: [{ key: "ca.crt", path: "ca.crt" }] },
      });
    }
    const kinds = objs.map((o) => `${o.kind}/${o.metadata!.name}`);
    expect(kinds).toContain("Secret/demo-broker-auth");
    expect(kinds).toContain("Secret/demo-broker-credentials");
    // The same input gives the same Secrets (a reconcile with nothing changed writes nothing).
    expect(buildOwnedObjects(secure())).toEqual(objs);
  });

  it("insecure: true is the anonymous plaintext broker of before, said in every tier Pod (DDNN_INSECURE)", () => {
    const spec = secured();
    spec.broker = { managed: { insecure: true } };
    const { brokerKey: _k, brokerCa: _c, ...none } = input(spec);
    const objs = buildOwnedObjects(none);
    const server = objs.find(
      (o) => o.kind === "Deployment" && o.metadata!.name === "demo-server",
    ) as V1Deployment;
    expect(envOf(server)).toMatchObject({
      DDNN_BROKER_URL: "mqtt://demo-broker.fog.svc:1883",
      DDNN_INSECURE: "true",
    });
    expect(objs.some((o) => o.kind === "Secret")).toBe(false);
    const cm = objs.find((o) => o.kind === "ConfigMap") as { data: Record<string, string> };
    expect(cm.data["mosquitto.conf"]).toBe(MOSQUITTO_CONF);
    // With tls or auth it is a contradiction, refused by the schema (and the API server's CEL).
    spec.broker = { managed: { insecure: true, auth: {} } };
    expect(() => modelOf(spec)).toThrow(/insecure: true turns TLS and auth off/);
  });

  it("without the operator's broker key a secure broker is an error naming DDNN_BROKER_KEY", () => {
    const { brokerKey: _, ...noKey } = input(secured());
    expect(() => buildOwnedObjects(noKey)).toThrow(/DDNN_BROKER_KEY/);
    const { brokerKey: __, ...noKeyDefault } = input();
    expect(() => buildOwnedObjects(noKeyDefault)).toThrow(/DDNN_BROKER_KEY.*insecure: true/);
  });

  it("in-cluster device agents with auth: the Pod exchanges its token; the broker knows each device node", () => {
    const spec = secured();
    spec.placement = { device: "device", edge: "edge", server: "server" };
    const model = modelOf(spec);
    const plan = planTiers(model.spec, THREE_STAGES);
    if (!plan.ok) throw new Error(plan.message);
    const { deviceIdentity: _, ...base } = {
      model,
      bundle: THREE_STAGES,
      plan: plan.plan,
      images: { image: "ddnn-fog:test", brokerImage: "eclipse-mosquitto:2" },
      ...chartOperator(["board-a", "board-b"]),
      brokerKey: new Uint8Array(32).fill(1),
    };
    // Without the endpoint the model cannot be built, and the error says what is missing.
    expect(() => buildOwnedObjects(base)).toThrow(/device identity endpoint \(DDNN_IDENTITY_URL/);
    const objects = buildOwnedObjects({
      ...base,
      deviceIdentity: { url: "https://ddnn-fog-identity.ddnn-system.svc:8444", caPem: "PEM" },
    });
    const ds = objects.find((o) => o.kind === "DaemonSet") as V1DaemonSet;
    const pod = ds.spec!.template.spec!;
    const c = pod.containers[0]!;
    expect(pod.automountServiceAccountToken).toBe(false);
    expect(pod.volumes).toContainEqual({
      name: "identity-token",
      projected: {
        sources: [
          {
            serviceAccountToken: {
              audience: "ddnn-broker",
              expirationSeconds: 3600,
              path: "token",
            },
          },
        ],
      },
    });
    const vars = Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value]));
    expect(vars).toMatchObject({
      DDNN_IDENTITY_URL: "https://ddnn-fog-identity.ddnn-system.svc:8444",
      DDNN_IDENTITY_TOKEN: "/var/run/secrets/ddnn/token",
      DDNN_IDENTITY_CA: "/etc/ddnn/identity-ca/ca.crt",
    });
    expect(vars.DDNN_BROKER_PASSWORD).toBeUndefined();
    // It logs in with the identity of the exchange over TLS: nothing insecure to say.
    expect(vars).not.toHaveProperty("DDNN_INSECURE");
    const ca = objects.find((o) => o.metadata?.name === "demo-identity-ca") as V1ConfigMap;
    expect(ca.data).toEqual({ "ca.crt": "PEM" });
    const secret = objects.find((o) => o.metadata?.name === "demo-broker-auth") as V1Secret;
    const passwd = Buffer.from(secret.data!.passwd!, "base64").toString("utf8");
    expect(passwd).toContain("fog/demo/device/board-a:$7$");
    expect(passwd).toContain("fog/demo/device/board-b:$7$");
    // Boards outside the cluster keep theirs; a node the device tier may not use gets none.
    expect(passwd).toContain("fog/demo/device/cam-1:$7$");
    const others = buildOwnedObjects({
      ...base,
      deviceIdentity: { url: "https://ddnn-fog-identity.ddnn-system.svc:8444" },
      nodes: [...base.nodes, { name: "server-1", labels: { "fog.ddnn.io/server": "true" } }],
    });
    const auth2 = others.find((o) => o.metadata?.name === "demo-broker-auth") as V1Secret;
    expect(Buffer.from(auth2.data!.passwd!, "base64").toString("utf8")).not.toContain("server-1");
  });
});
