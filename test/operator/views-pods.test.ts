/**
 * The Pods the operator builds for a multi-view model, started as the kubelet would start them:
 * for examples/ddnnmodel-views.yaml's spec (with f32 features, its own aggregate threshold, and a
 * deadline and fusion window for a loaded test machine), every tier Pod's environment from the builders is loaded by its own
 * program (`ddnn server`, `ddnn gateway`, and `ddnn agent` once per view DaemonSet, each in its
 * own "Pod": its own HTTP port, its node and view as device id) and the programs run against the
 * managed broker the operator builds (a real Mosquitto with its mosquitto.conf, password file, ACL
 * and the certificate it issued: TLS, an identity per client). Only what a cluster supplies is
 * replaced: the broker's address (with the Service's name for its certificate), the mounted files
 * (the CA, the bundle's location: the shipped directory instead of its URL), the Secrets'
 * values, the identity each agent's token exchange would give it, and the HTTP port. Each capture of the views sample
 * is POSTed to the three agents at once (?capture=i); every capture must be answered on every
 * device, fused from all three views, with the in-process multi-view pipeline's exit and label.
 */

import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { V1DaemonSet, V1Deployment, V1EnvVar, V1Secret } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { shippedViews, viewsSample } from "../../cli/paths.js";
import { loadTierConfig } from "../../cli/tiers.js";
import { readBundle } from "../../core/bundle/read.js";
import { readIdx } from "../../core/dataset/idx.js";
import { adaptiveDecisions } from "../../core/evaluation.js";
import { makeLogger } from "../../core/runtime/tier.js";
import { parseModelRef } from "../../core/topics.js";
import { ViewsPipeline } from "../../core/views-pipeline.js";
import type { AgentConfig } from "../../device-agent/config.js";
import { type RunningAgent, startAgent } from "../../device-agent/main.js";
import type { GatewayConfig } from "../../gateway/config.js";
import { type RunningGateway, startGateway } from "../../gateway/gateway.js";
import { identityName, identityPassword } from "../../operator/broker-auth.js";
import { buildOwnedObjects, type OwnedObject } from "../../operator/builders.js";
import { bundleFacts, planTiers } from "../../operator/placement.js";
import type { DDNNModelSpecInput } from "../../operator/spec.js";
import type { ServerConfig } from "../../server/config.js";
import { type RunningServer, startServer } from "../../server/server.js";
import { REPO_ROOT } from "../cluster/control-plane.js";
import { testBrokerKey } from "../support/broker-ca.js";
import { tempDir } from "../support/bundle-fixture.js";
import { containerEnv } from "../support/container-env.js";
import { waitFor } from "../support/fog.js";
import { decoded, ManagedBroker } from "../support/managed-broker.js";
import { freePort } from "../support/mosquitto.js";
import { chartOperator, modelOf } from "./model-fixtures.js";

const N = 60;
const K = 3;
const bundleDir = shippedViews();
const sample = viewsSample(bundleDir, K)!;
const quiet = () => makeLogger(process.env.DDNN_TEST_LOG ?? "error", "test");
const example = parse(
  readFileSync(join(REPO_ROOT, "examples", "ddnnmodel-views.yaml"), "utf8").split(/^---$/m)[1]!,
) as { metadata: { name: string; namespace: string }; spec: DDNNModelSpecInput };

/** One node per view (chartOperator labels fog.ddnn.io/view = i; the example picks cam-c by name). */
const NODES = ["cam-a", "cam-b", "cam-c"];
let broker: ManagedBroker;
let objects: OwnedObject[];
let caFile = "";

beforeAll(async () => {
  const spec: DDNNModelSpecInput = {
    ...example.spec,
    wire: { dtype: "f32", compression: "none" },
    // Not the bundle's 0.4: the gateway's aggregate must exit where the spec says.
    exits: { device: 0.3 },
    deadlineMs: 5000,
    tiers: {
      ...example.spec.tiers,
      edge: { ...example.spec.tiers!.edge, fusionWindowMs: 1000 },
    },
  };
  const model = modelOf(spec, example.metadata.name, example.metadata.namespace);
  const bundle = await readBundle(bundleDir);
  const facts = bundleFacts(bundle.manifest, bundle.digest);
  expect(facts.views).toBe(K);
  const plan = planTiers(model.spec, facts);
  if (!plan.ok) throw new Error(plan.message);
  objects = buildOwnedObjects({
    model,
    bundle: facts,
    plan: plan.plan,
    images: { image: "ddnn-fog:test", brokerImage: "eclipse-mosquitto:2" },
    ...chartOperator(NODES, K),
  });
  const dir = tempDir("ddnn-views-broker-");
  chmodSync(dir, 0o755);
  broker = new ManagedBroker(dir, await freePort(), example.metadata.name);
  await broker.start(broker.mount(objects));
  caFile = join(dir, "ca.crt");
  writeFileSync(caFile, secretData(`${example.metadata.name}-broker-cert`)["ca.crt"]!);
}, 60_000);
afterAll(async () => {
  await broker?.stop();
});

const secretData = (name: string) =>
  decoded(objects.find((o) => o.kind === "Secret" && o.metadata!.name === name) as V1Secret);

/**
 * What the container of `workload` sees in its environment on `node`: values, Secret references
 * and the node's name resolved, $(NAME) expanded as the kubelet does.
 */
function podEnv(workload: OwnedObject, node: string): Record<string, string> {
  const spec = (workload as V1Deployment | V1DaemonSet).spec!.template.spec!;
  const { name, namespace } = example.metadata;
  const credentials = secretData(`${name}-broker-credentials`);
  const { env } = containerEnv(spec.containers[0]!.env as V1EnvVar[], (e) => {
    const from = e.valueFrom;
    if (from?.fieldRef?.fieldPath === "spec.nodeName") return node;
    if (from?.secretKeyRef?.name === `${name}-broker-credentials`)
      return credentials[from.secretKeyRef.key]!;
    throw new Error(`${e.name}: no value this test can give (${JSON.stringify(from)})`);
  });
  // A device agent exchanges its Pod's token for its identity (test/device-identity.test.ts
  // checks that exchange against a real API server): here it is given what the operator answers.
  const identity = env.DDNN_IDENTITY_URL !== undefined && env.DDNN_DEVICE_ID;
  for (const n of ["DDNN_IDENTITY_URL", "DDNN_IDENTITY_TOKEN", "DDNN_IDENTITY_CA"]) delete env[n];
  const user = identity
    ? identityName(parseModelRef(`${namespace}/${name}`), "device", identity)
    : undefined;
  // What the cluster supplies: the broker's address (its certificate names the Service), the
  // mounted CA, the bundle (here from its directory), a port.
  return {
    ...env,
    ...(user
      ? { DDNN_BROKER_USERNAME: user, DDNN_BROKER_PASSWORD: identityPassword(testBrokerKey, user) }
      : {}),
    DDNN_BROKER_URL: `mqtts://127.0.0.1:${broker.port}`,
    DDNN_BROKER_TLS_NAME: `${name}-broker.${namespace}.svc`,
    DDNN_BROKER_CA: caFile,
    DDNN_BUNDLE: bundleDir,
    DDNN_HTTP_PORT: "0",
    DDNN_HTTP_HOST: "127.0.0.1",
    DDNN_LOG_LEVEL: "error",
  };
}

const workload = (kind: string, name: string) => {
  const o = objects.find((x) => x.kind === kind && x.metadata!.name === name);
  if (!o) throw new Error(`no ${kind} ${name}`);
  return o;
};

interface HttpAnswer {
  label: number;
  stage: string;
  degraded: boolean;
  capture?: string;
  views?: number[];
}

describe("the operator's Pods of a multi-view model, started from their environment", () => {
  it("answer every capture on every device, fused from all views, as the in-process pipeline", async () => {
    const name = example.metadata.name;
    const serverCfg = loadTierConfig(
      "server",
      [],
      podEnv(workload("Deployment", `${name}-server`), "server-node"),
    ) as ServerConfig;
    const gatewayCfg = loadTierConfig(
      "gateway",
      [],
      podEnv(workload("Deployment", `${name}-edge`), "edge-node"),
    ) as GatewayConfig;
    const agentCfgs = Array.from(
      { length: K },
      (_, v) =>
        loadTierConfig(
          "agent",
          [],
          podEnv(workload("DaemonSet", `${name}-device-view${v}`), NODES[v]!),
        ) as AgentConfig,
    );
    expect(agentCfgs.map((c) => [c.view, c.deviceId])).toEqual([
      [0, "cam-a-view0"],
      [1, "cam-b-view1"],
      [2, "cam-c-view2"],
    ]);
    expect(gatewayCfg.stages).toBeUndefined();

    const reference = await ViewsPipeline.load(bundleDir, {
      thresholds: { device: 0.3 },
      intraOpThreads: 1,
    });
    const images = await Promise.all(sample.images.map((p) => readIdx(p)));
    const per = reference.samplePixels;
    const pixels = images.map((i) => i.data.subarray(0, N * per));
    const want = adaptiveDecisions(await reference.evaluateAll(pixels, N), reference.policy);
    const stages = reference.bundle.bundle.manifest.stages.map((s) => s.name);
    await reference.release();

    const started: { close(): Promise<void> }[] = [];
    try {
      const server: RunningServer = await startServer(serverCfg, quiet());
      started.push(server);
      const gateway: RunningGateway = await startGateway(gatewayCfg, quiet());
      started.push(gateway);
      const agents: RunningAgent[] = [];
      for (const cfg of agentCfgs) {
        const a = await startAgent(cfg, {}, quiet());
        started.push(a);
        agents.push(a);
      }
      await waitFor(() => server.service.subscribed, 10_000, "server subscribed");
      await waitFor(() => gateway.fusion?.subscribed === true, 10_000, "gateway fusing");
      // Each agent's reply topic too: the first capture must not race the last agent's start.
      await waitFor(
        () => agents.every((a) => (a.views ?? a.offload).subscribed),
        10_000,
        "every agent subscribed to its replies",
      );

      const answers: { capture: number; view: number; answer: HttpAnswer }[] = [];
      for (let i = 0; i < N; i++) {
        const replies = await Promise.all(
          agents.map(async (a, v) => {
            const res = await fetch(`http://127.0.0.1:${a.port}/v1/infer?capture=${i}`, {
              method: "POST",
              headers: { "Content-Type": "application/octet-stream" },
              body: pixels[v]!.subarray(i * per, (i + 1) * per),
              signal: AbortSignal.timeout(30_000),
            });
            expect(res.status).toBe(200);
            return { capture: i, view: v, answer: (await res.json()) as HttpAnswer };
          }),
        );
        answers.push(...replies);
      }
      expect(answers).toHaveLength(K * N);
      expect(answers.filter((a) => a.answer.degraded)).toEqual([]);
      const fused = answers.filter((a) => a.answer.views?.join(",") === "0,1,2").length;
      const agree = answers.filter(
        (a) =>
          a.answer.stage === stages[want.exitStage[a.capture]!] &&
          a.answer.label === want.label[a.capture],
      ).length;
      const atGateway = answers.filter((a) => a.answer.stage === stages[0]).length / K;
      console.log(
        `operator Pods of ${name}: ${N} captures x ${K} views, ${fused}/${K * N} answers fused from all views, ${agree}/${K * N} agree with the in-process pipeline, ${atGateway} captures answered by the aggregate`,
      );
      expect(fused).toBe(K * N);
      expect(agree).toBe(K * N);
      // Both exits are used: the aggregate answers some captures, the server the others.
      expect(atGateway).toBeGreaterThan(0);
      expect(atGateway).toBeLessThan(N);
    } finally {
      for (const s of started.reverse()) await s.close();
    }
  }, 180_000);
});
