/**
 * The Pods the operator builds for a multi-view model, started as the kubelet would start them:
 * for examples/ddnnmodel-views.yaml's spec (with f32 features, its own aggregate threshold, and a
 * deadline and fusion window for a loaded test machine), every tier Pod's environment from the builders is loaded by its own
 * program (`ddnn server`, `ddnn gateway`, and `ddnn agent` once per view DaemonSet, each in its
 * own "Pod": its own HTTP port, its Pod name as device id) and the programs run against a real
 * Mosquitto. Only what a cluster supplies is replaced: the broker address, the bundle's location
 * (the shipped directory instead of its URL) and the HTTP port. Each capture of the views sample
 * is POSTed to the three agents at once (?capture=i); every capture must be answered on every
 * device, fused from all three views, with the in-process multi-view pipeline's exit and label.
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { V1DaemonSet, V1Deployment, V1EnvVar } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { shippedViews, viewsSample } from "../../cli/paths.js";
import { loadTierConfig } from "../../cli/tiers.js";
import { readBundle } from "../../core/bundle/read.js";
import { readIdx } from "../../core/dataset/idx.js";
import { adaptiveDecisions } from "../../core/evaluation.js";
import { makeLogger } from "../../core/runtime/tier.js";
import { ViewsPipeline } from "../../core/views-pipeline.js";
import type { AgentConfig } from "../../device-agent/config.js";
import { type RunningAgent, startAgent } from "../../device-agent/main.js";
import type { GatewayConfig } from "../../gateway/config.js";
import { type RunningGateway, startGateway } from "../../gateway/gateway.js";
import { buildOwnedObjects, type OwnedObject } from "../../operator/builders.js";
import { bundleFacts, planTiers } from "../../operator/placement.js";
import type { DDNNModelSpecInput } from "../../operator/spec.js";
import type { ServerConfig } from "../../server/config.js";
import { type RunningServer, startServer } from "../../server/server.js";
import { REPO_ROOT } from "../cluster/control-plane.js";
import { waitFor } from "../support/fog.js";
import { type Mosquitto, startMosquitto } from "../support/mosquitto.js";
import { modelOf } from "./model-fixtures.js";

const N = 60;
const K = 3;
const bundleDir = shippedViews();
const sample = viewsSample(bundleDir, K)!;
const quiet = () => makeLogger(process.env.DDNN_TEST_LOG ?? "error", "test");
const example = parse(
  readFileSync(join(REPO_ROOT, "examples", "ddnnmodel-views.yaml"), "utf8").split(/^---$/m)[1]!,
) as { metadata: { name: string; namespace: string }; spec: DDNNModelSpecInput };

let mosquitto: Mosquitto;
let objects: OwnedObject[];

beforeAll(async () => {
  mosquitto = await startMosquitto();
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
  });
}, 60_000);
afterAll(async () => {
  await mosquitto?.stop();
});

/** What the container of `workload` sees in its environment, in a Pod named `pod`. */
function podEnv(workload: OwnedObject, pod: string): Record<string, string> {
  const spec = (workload as V1Deployment | V1DaemonSet).spec!.template.spec!;
  const env: Record<string, string> = {};
  for (const e of spec.containers[0]!.env as V1EnvVar[]) {
    const path = e.valueFrom?.fieldRef?.fieldPath;
    if (e.value !== undefined) env[e.name] = e.value;
    else if (path === "metadata.name") env[e.name] = pod;
    else throw new Error(`${e.name}: no value this test can give (${JSON.stringify(e.valueFrom)})`);
  }
  // What the cluster supplies: the broker's address, the bundle (here from its directory), a port.
  return {
    ...env,
    DDNN_BROKER_URL: mosquitto.url,
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
      podEnv(workload("Deployment", `${name}-server`), `${name}-server-0`),
    ) as ServerConfig;
    const gatewayCfg = loadTierConfig(
      "gateway",
      [],
      podEnv(workload("Deployment", `${name}-edge`), `${name}-edge-0`),
    ) as GatewayConfig;
    const agentCfgs = Array.from(
      { length: K },
      (_, v) =>
        loadTierConfig(
          "agent",
          [],
          podEnv(workload("DaemonSet", `${name}-device-view${v}`), `${name}-device-view${v}-x${v}`),
        ) as AgentConfig,
    );
    expect(agentCfgs.map((c) => [c.view, c.deviceId])).toEqual([
      [0, `${name}-device-view0-x0`],
      [1, `${name}-device-view1-x1`],
      [2, `${name}-device-view2-x2`],
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
