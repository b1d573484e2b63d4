import { makeLogger } from "../../core/runtime/tier.js";
import type { Compression } from "../../core/wire/frame.js";
import { agentSchema } from "../../device-agent/config.js";
import { type RunningAgent, startAgent } from "../../device-agent/main.js";
import { gatewaySchema, type RunningGateway, startGateway } from "../../gateway/gateway.js";
import { serverSchema } from "../../server/config.js";
import { type RunningServer, startServer } from "../../server/server.js";

export interface Fog {
  server?: RunningServer;
  gateway?: RunningGateway;
  agents: RunningAgent[];
  close(): Promise<void>;
}

export interface FogOptions {
  bundle: string;
  broker: string;
  stageNames: string[];
  sharedSubscriptions: boolean;
  dtype?: "f32" | "f16" | "u8q";
  compression?: Compression;
  devices?: number;
  deadlineMs?: number;
  workers?: number;
  maxBatch?: number;
  extra?: Record<string, unknown>;
  /** Do not wait for the agents' reply subscriptions (a fog without a reachable broker). */
  skipSubscribeWait?: boolean;
}

const quiet = () => makeLogger(process.env.DDNN_TEST_LOG ?? "error", "test");

/** Starts the tiers a bundle needs (server, gateway for 3+ stages, device agents) in this process. */
export async function startFog(o: FogOptions): Promise<Fog> {
  const k = o.stageNames.length;
  const common = {
    bundle: o.bundle,
    broker: o.broker,
    httpHost: "127.0.0.1",
    httpPort: 0,
    sharedSubscriptions: o.sharedSubscriptions,
    dtype: o.dtype ?? "f32",
    compression: o.compression ?? "none",
    ...o.extra,
  };
  const fog: Fog = {
    agents: [],
    async close() {
      await Promise.all(fog.agents.map((a) => a.close()));
      await fog.gateway?.close();
      await fog.server?.close();
    },
  };
  if (k >= 2) {
    fog.server = await startServer(
      serverSchema.parse({
        ...common,
        stages: [o.stageNames[k - 1]],
        workers: o.workers ?? 2,
        maxBatch: o.maxBatch ?? 16,
      }),
      quiet(),
    );
  }
  if (k >= 3)
    fog.gateway = await startGateway(
      gatewaySchema.parse({ ...common, stages: o.stageNames.slice(1, k - 1) }),
      quiet(),
    );
  for (let d = 0; d < (o.devices ?? 1); d++) {
    fog.agents.push(
      await startAgent(
        agentSchema.parse({
          ...common,
          deviceId: `dev-${d}`,
          stages: [o.stageNames[0]],
          deadlineMs: o.deadlineMs ?? 5000,
          source: ["http"],
        }),
        {},
        quiet(),
      ),
    );
  }
  for (const a of o.skipSubscribeWait ? [] : fog.agents)
    await waitFor(() => a.offload.subscribed, 5000, "agent subscribed to its reply topic");
  for (const t of [fog.server, fog.gateway])
    if (t) await waitFor(() => t.service.subscribed, 5000, "tier subscribed to its request topic");
  return fog;
}

export async function waitFor(
  check: () => boolean,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
