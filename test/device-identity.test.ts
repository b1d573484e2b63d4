/**
 * In-cluster device identities (docs/security.md, "Device identity"), against a real
 * kube-apiserver and etcd and a real Mosquitto: tokens come from the API server's TokenRequest
 * (what the kubelet asks for a projected token volume), bound to Pods placed on two nodes; the
 * operator's exchange checks them with TokenReview under exactly the operator's RBAC; the agent's
 * client (device-agent/identity.ts) fetches the identity over HTTPS; the broker takes the
 * operator's password file.
 */
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { V1ConfigMap, V1DaemonSet, V1Secret } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { parseModelRef } from "../core/topics.js";
import { fetchDeviceIdentity } from "../device-agent/identity.js";
import {
  brokerIdentities,
  identityName,
  identityPassword,
  passwordFile,
} from "../operator/broker-auth.js";
import { COMPONENT_LABEL, MODEL_LABEL, objectName, VIEW_LABEL } from "../operator/builders.js";
import {
  DeviceIdentityServer,
  exchangeDeviceToken,
  IDENTITY_AUDIENCE,
  IdentityError,
} from "../operator/device-identity.js";
import { KubeClient, type KubeObject } from "../operator/kube.js";
import { Operator } from "../operator/operator.js";
import { API_VERSION, type DDNNModel, KIND } from "../operator/spec.js";
import { type ControlPlane, REPO_ROOT } from "./cluster/control-plane.js";
import {
  adminClient,
  BundleServer,
  DEMO_DIGEST_URL,
  demoBundleBytes,
  getOrUndefined,
  startCluster,
  waitFor,
} from "./operator/harness.js";
import { testBrokerCa } from "./support/broker-ca.js";
import { type Mosquitto, startMosquitto } from "./support/mosquitto.js";
import { connectOutcome } from "./support/mqtt-outcome.js";
import { makeTestPki, type TestPki } from "./support/tls.js";

const NS = "fog";
const MODEL = "cams";
const NODES = ["board-a", "board-b"];
const KEY = new Uint8Array(32).fill(7);
const REF = parseModelRef(`${NS}/${MODEL}`);

let cp: ControlPlane;
let client: KubeClient;
const models = new Map<string, unknown>();
const uids = new Map<string, string>();
const logs: string[] = [];
let server: DeviceIdentityServer;
let endpoint = "";
let caFile = "";
let pki: TestPki;
let dir = "";

/** A model with the default (secure) managed broker, or an insecure one; views: two views. */
const model = (name: string, secure: boolean, views = false) => ({
  apiVersion: API_VERSION,
  kind: KIND,
  metadata: { name, namespace: NS },
  spec: {
    bundle: { url: "http://models.fog.svc/demo.tar.gz", sha256: "ab".repeat(32) },
    placement: views
      ? { device: "device", server: "server" }
      : { device: "edge", edge: "edge", server: "server" },
    ...(secure ? {} : { broker: { managed: { insecure: true } } }),
    ...(views ? { tiers: { device: { views: [{ view: 0 }, { view: 1 }] } } } : {}),
  },
});

/** A device agent's Pod as the DaemonSet controller makes it, already bound to `node`. */
const pod = (
  name: string,
  node: string,
  owner = objectName({ metadata: { name: MODEL } } as Pick<DDNNModel, "metadata">, "device"),
  labels: Record<string, string> = { [MODEL_LABEL]: MODEL },
) => ({
  apiVersion: "v1",
  kind: "Pod",
  metadata: {
    name,
    namespace: NS,
    labels: { ...labels, [COMPONENT_LABEL]: "device" },
    ownerReferences: [
      {
        apiVersion: "apps/v1",
        kind: "DaemonSet",
        name: owner,
        uid: "0d5e7c6a-1111-4222-8333-944455556666",
        controller: true,
      },
    ],
  },
  spec: {
    nodeName: node,
    serviceAccountName: "default",
    containers: [{ name: "agent", image: "ddnn-fog:test" }],
  },
});

/** A projected-volume token of `pod` (TokenRequest bound to the Pod), as the kubelet gets one. */
async function tokenFor(
  podName: string | undefined,
  audience = IDENTITY_AUDIENCE,
): Promise<string> {
  const args = [
    "create",
    "token",
    "default",
    "-n",
    NS,
    "--audience",
    audience,
    "--duration",
    "10m",
  ];
  if (podName) args.push("--bound-object-kind", "Pod", "--bound-object-name", podName);
  return (await cp.kubectlOk(args)).trim();
}

async function exchange(token: string, name = MODEL) {
  return exchangeDeviceToken(
    { client, model: (ns, n) => models.get(`${ns}/${n}`) },
    KEY,
    token,
    name,
  );
}

async function refusal(token: string, name = MODEL): Promise<IdentityError> {
  const err = await exchange(token, name).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(IdentityError);
  return err as IdentityError;
}

beforeAll(async () => {
  cp = await startCluster();
  client = new KubeClient(cp.kubeConfig("operator"), "ddnn-identity-test");
  // No controller manager here: the namespace's default ServiceAccount is made by hand.
  await cp.kubectlOk(["create", "serviceaccount", "default", "-n", NS]);
  for (const node of NODES)
    await cp.kubectlOk(["apply", "-f", "-"], {
      input: JSON.stringify({ apiVersion: "v1", kind: "Node", metadata: { name: node } }),
    });
  for (const m of [model(MODEL, true), model("open", false), model("views", true, true)]) {
    const out = await cp.kubectlOk(["apply", "-o", "json", "-f", "-"], {
      input: JSON.stringify(m),
    });
    const obj = JSON.parse(out) as KubeObject;
    models.set(`${NS}/${obj.metadata!.name}`, obj);
  }
  const view = (v: number) => ({ [MODEL_LABEL]: "views", [VIEW_LABEL]: String(v) });
  for (const [name, node, owner, labels] of [
    ["agent-a", "board-a", undefined, undefined],
    ["agent-b", "board-b", undefined, undefined],
    ["intruder", "board-b", "someone-else", undefined],
    // A lab node that sees both views of the model "views": one agent per view.
    ["view0-a", "board-a", "views-device-view0", view(0)],
    ["view1-a", "board-a", "views-device-view1", view(1)],
    // Labelled view 1, but made by view 0's DaemonSet.
    ["view-liar", "board-b", "views-device-view0", view(1)],
  ] as const) {
    const out = await cp.kubectlOk(["apply", "-o", "json", "-f", "-"], {
      input: JSON.stringify(pod(name, node, owner, labels)),
    });
    uids.set(name, (JSON.parse(out) as KubeObject).metadata!.uid!);
  }
  dir = mkdtempSync(join(tmpdir(), "ddnn-identity-"));
  const tls = makeTestPki();
  pki = tls;
  caFile = tls.caFile;
  server = new DeviceIdentityServer({
    kube: { client, model: (ns, n) => models.get(`${ns}/${n}`) },
    brokerKey: KEY,
    port: 0,
    host: "127.0.0.1",
    tls: { certFile: tls.certFile, keyFile: tls.keyFile },
    log: { info: (m) => logs.push(m), warn: (m) => logs.push(m) },
  });
  endpoint = `https://127.0.0.1:${await server.start()}`;
}, 240_000);

afterAll(async () => {
  await server?.stop();
  client?.close();
  await cp?.stop();
});

describe("device identity exchange (real kube-apiserver, operator RBAC)", () => {
  it("a device agent's Pod gets its own node's identity, and only that", async () => {
    for (const [p, node] of [
      ["agent-a", "board-a"],
      ["agent-b", "board-b"],
    ] as const) {
      const creds = await exchange(await tokenFor(p));
      const username = identityName(REF, "device", node);
      expect(creds).toEqual({
        username,
        password: identityPassword(KEY, username),
        node,
        deviceId: node,
      });
    }
  });

  it("a view's agent gets the identity of its node and view; one of a view it does not run, none", async () => {
    const ref = parseModelRef(`${NS}/views`);
    for (const [p, v] of [
      ["view0-a", 0],
      ["view1-a", 1],
    ] as const) {
      const creds = await exchange(await tokenFor(p), "views");
      const username = identityName(ref, "device", `board-a-view${v}`);
      expect(creds).toEqual({
        username,
        password: identityPassword(KEY, username),
        node: "board-a",
        deviceId: `board-a-view${v}`,
      });
    }
    const liar = await refusal(await tokenFor("view-liar"), "views");
    expect([liar.status, liar.message]).toEqual([
      403,
      `Pod ${NS}/view-liar is not a device agent of DDNNModel ${NS}/views (DaemonSet views-device-view1)`,
    ]);
    // A view's Pod is no agent of a one-view model, nor the other way round.
    expect((await refusal(await tokenFor("view0-a"), MODEL)).status).toBe(403);
    expect((await refusal(await tokenFor("agent-a"), "views")).status).toBe(403);
  });

  it("refuses what is not this model's device agent, naming the problem", async () => {
    expect((await refusal("not-a-token")).status).toBe(401);
    const other = await refusal(await tokenFor("agent-a", "some-other-audience"));
    expect(other.status).toBe(401);
    expect(other.message).toContain(`audience ${IDENTITY_AUDIENCE}`);
    const unbound = await refusal(await tokenFor(undefined));
    expect([unbound.status, unbound.message]).toEqual([
      403,
      "the token is not bound to a Pod (use a projected token)",
    ]);
    const intruder = await refusal(await tokenFor("intruder"));
    expect(intruder.status).toBe(403);
    expect(intruder.message).toContain("is not a device agent of DDNNModel fog/cams");
    const open = await refusal(await tokenFor("agent-a"), "open");
    expect([open.status, open.message]).toEqual([
      409,
      "DDNNModel fog/open has an insecure or external broker: it takes no identities",
    ]);
    expect((await refusal(await tokenFor("agent-a"), "missing")).status).toBe(404);
    const keyless = await exchangeDeviceToken(
      { client, model: (ns, n) => models.get(`${ns}/${n}`) },
      undefined,
      await tokenFor("agent-a"),
      MODEL,
    ).catch((e: IdentityError) => e);
    expect((keyless as IdentityError).status).toBe(503);
  });

  it("a token outlives nothing: once its Pod is deleted it is refused", async () => {
    await cp.kubectlOk(["apply", "-f", "-"], {
      input: JSON.stringify(pod("agent-gone", "board-a")),
    });
    const token = await tokenFor("agent-gone");
    expect((await exchange(token)).node).toBe("board-a");
    await cp.kubectlOk(["delete", "pod", "-n", NS, "agent-gone", "--wait=false"]);
    // A Pod without a kubelet has no finalizer to wait for: it is gone at once.
    const gone = await refusal(token);
    expect([401, 403]).toContain(gone.status);
  });

  it("the agent's client gets the identity over HTTPS; the broker takes it and no other node's", async () => {
    const tokenFile = join(dir, "token");
    writeFileSync(tokenFile, await tokenFor("agent-a"));
    const grant = await fetchDeviceIdentity({
      url: endpoint,
      tokenFile,
      caFile,
      model: MODEL,
      deviceId: "board-a",
      retryForMs: 0,
    });
    expect(grant.username).toBe(identityName(REF, "device", "board-a"));
    // The same token for another device id: the client refuses rather than use a wrong identity.
    await expect(
      fetchDeviceIdentity({
        url: endpoint,
        tokenFile,
        caFile,
        model: MODEL,
        deviceId: "board-b",
        retryForMs: 0,
      }),
    ).rejects.toThrow("which is not device board-b");
    // The operator's refusal reaches the agent in words.
    writeFileSync(tokenFile, await tokenFor("intruder"));
    await expect(
      fetchDeviceIdentity({
        url: endpoint,
        tokenFile,
        caFile,
        model: MODEL,
        deviceId: "board-b",
        retryForMs: 0,
      }),
    ).rejects.toThrow(
      /refused this device's identity: 403: Pod fog\/intruder is not a device agent/,
    );
    // Plaintext to another host is refused before anything is sent.
    await expect(
      fetchDeviceIdentity({
        url: "http://ddnn-operator.ddnn-system.svc:8444",
        tokenFile,
        model: MODEL,
        deviceId: "board-a",
      }),
    ).rejects.toThrow("refusing a plaintext identity endpoint");

    const plan = { device: ["device"], edge: ["edge"], server: ["server"] };
    const file = join(dir, "passwd");
    writeFileSync(file, passwordFile(KEY, brokerIdentities(REF, plan, NODES)));
    // Mosquitto reads it after dropping root for its own user.
    chmodSync(dir, 0o755);
    chmodSync(file, 0o644);
    const broker: Mosquitto = await startMosquitto({ passwordFile: file });
    try {
      const connect = (username: string, password: string) =>
        connectOutcome(broker.url, { username, password });
      expect(await connect(grant.username, grant.password)).toBe("connected");
      expect(await connect(identityName(REF, "device", "board-b"), grant.password)).toMatch(
        /Not authorized|Bad User Name or Password/,
      );
    } finally {
      await broker.stop();
    }
    // Nothing logged holds a password or a token.
    const tokens = [readFileSync(tokenFile, "utf8")];
    for (const line of logs) {
      expect(line).not.toContain(grant.password);
      for (const t of tokens) expect(line).not.toContain(t);
    }
    expect(logs.some((l) => l.includes(`issued broker identity ${grant.username}`))).toBe(true);
  });
});

describe("the operator wires the exchange into a model's objects (real kube-apiserver)", () => {
  const bundles = new BundleServer();
  let operator: Operator;
  let admin: KubeClient;
  const saved = process.env.HTTP_PROXY;
  const secretText = async (name: string, key: string) => {
    const s = await getOrUndefined<V1Secret>(admin, {
      apiVersion: "v1",
      plural: "secrets",
      namespace: NS,
      name,
    });
    const v = s?.data?.[key];
    return v === undefined ? undefined : Buffer.from(v, "base64").toString("utf8");
  };
  const label = (node: string) =>
    cp.kubectlOk(["label", "node", node, "fog.ddnn.io/tier=device", "--overwrite"]);

  beforeAll(async () => {
    admin = adminClient(cp);
    process.env.HTTP_PROXY = await bundles.start();
    bundles.files.set(DEMO_DIGEST_URL, demoBundleBytes());
    operator = new Operator({
      kubeConfig: cp.kubeConfig("operator"),
      identity: "identity-test",
      images: { image: "ddnn-fog:test", brokerImage: "eclipse-mosquitto:2" },
      leaderElection: false,
      httpPort: 0,
      httpHost: "127.0.0.1",
      resyncMs: 3_600_000,
      brokerKey: KEY,
      brokerCa: testBrokerCa,
      deviceIdentity: {
        port: 0,
        host: "127.0.0.1",
        url: "https://ddnn-fog-identity.ddnn-system.svc:8444",
        tls: { certFile: pki.certFile, keyFile: pki.keyFile },
        caPem: readFileSync(caFile, "utf8"),
      },
      log: { info: (m) => logs.push(m), warn: (m) => logs.push(m) },
    });
    await operator.start();
  }, 60_000);

  afterAll(async () => {
    await operator?.stop();
    await bundles.stop();
    admin?.close();
    if (saved === undefined) delete process.env.HTTP_PROXY;
    else process.env.HTTP_PROXY = saved;
  });

  it("device Pods get the token and the endpoint; the broker learns each device node as it is labelled", async () => {
    // The example model (device stage on nodes labelled fog.ddnn.io/tier=device), with auth.
    const example = parseAllDocuments(
      readFileSync(join(REPO_ROOT, "examples", "ddnnmodel.yaml"), "utf8"),
    )
      .map((d) => d.toJS() as { kind: string; spec: { broker?: unknown } })
      .find((d) => d.kind === "DDNNModel")!;
    // Nothing about security: a managed broker has TLS and an identity per client by default.
    expect(example.spec.broker).toEqual({ managed: { kind: "mosquitto" } });
    await label("board-a");
    await cp.kubectlOk(["apply", "-f", "-"], { input: JSON.stringify(example) });
    const lines = () =>
      secretText("demo-broker-auth", "passwd").then((p) =>
        (p ?? "")
          .split("\n")
          .filter((l) => l.startsWith("fog/demo/device/"))
          .map((l) => l.split(":")[0]),
      );
    await waitFor("board-a in the password file", async () =>
      (await lines()).join(",") === "fog/demo/device/board-a" ? true : undefined,
    );
    await label("board-b");
    await waitFor("board-b in the password file too", async () =>
      (await lines()).join(",") === "fog/demo/device/board-a,fog/demo/device/board-b"
        ? true
        : undefined,
    );
    const acl = (await secretText("demo-broker-auth", "acl")) ?? "";
    expect(acl).toContain("user fog/demo/device/board-b\ntopic read ddnn/fog/demo/reply/board-b");
    const ds = await waitFor("the device DaemonSet", () =>
      getOrUndefined<V1DaemonSet>(admin, {
        apiVersion: "apps/v1",
        plural: "daemonsets",
        namespace: NS,
        name: "demo-device",
      }),
    );
    const template = ds.spec!.template.spec!;
    expect(template.automountServiceAccountToken).toBe(false);
    expect(template.volumes?.find((v) => v.name === "identity-token")?.projected?.sources).toEqual([
      {
        serviceAccountToken: {
          audience: IDENTITY_AUDIENCE,
          expirationSeconds: 3600,
          path: "token",
        },
      },
    ]);
    const vars = Object.fromEntries(
      (template.containers[0]!.env ?? []).map((e) => [e.name, e.value]),
    );
    expect(vars.DDNN_IDENTITY_URL).toBe("https://ddnn-fog-identity.ddnn-system.svc:8444");
    expect(vars.DDNN_IDENTITY_CA).toBe("/etc/ddnn/identity-ca/ca.crt");
    const ca = await getOrUndefined<V1ConfigMap>(admin, {
      apiVersion: "v1",
      plural: "configmaps",
      namespace: NS,
      name: "demo-identity-ca",
    });
    expect(ca?.data?.["ca.crt"]).toBe(readFileSync(caFile, "utf8"));

    // A Pod of that DaemonSet on board-b, and its token at the operator's own endpoint.
    await cp.kubectlOk(["apply", "-f", "-"], {
      input: JSON.stringify({
        ...pod("demo-agent-b", "board-b", "demo-device"),
        metadata: {
          ...pod("demo-agent-b", "board-b", "demo-device").metadata,
          labels: { [MODEL_LABEL]: "demo", [COMPONENT_LABEL]: "device" },
        },
      }),
    });
    const tokenFile = join(dir, "token-demo");
    writeFileSync(tokenFile, await tokenFor("demo-agent-b"));
    const grant = await fetchDeviceIdentity({
      url: `https://127.0.0.1:${operator.identityPort()}`,
      tokenFile,
      caFile,
      model: "demo",
      deviceId: "board-b",
      retryForMs: 0,
    });
    expect(grant.username).toBe("fog/demo/device/board-b");
    expect(grant.password).toBe(identityPassword(KEY, "fog/demo/device/board-b"));
    const metrics = await (await fetch(`http://127.0.0.1:${operator.port()}/metrics`)).text();
    expect(metrics).toMatch(/ddnn_operator_device_identities_total\{result="issued"\} 1/);
    expect(metrics).not.toContain(grant.password);
  });
});
