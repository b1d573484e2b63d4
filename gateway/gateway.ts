/**
 * The edge tier: runs the middle stage(s) of the bundle on a worker pool; a confident exit answers
 * the device directly, anything else goes on to the next stage's topic with the original replyTo,
 * so the server's answer still goes straight to the device. For a multi-view bundle it is also
 * the local aggregator (gateway/fusion.ts): it fuses the views of every capture.
 */

import type { Logger } from "pino";
import { ConfigError } from "../core/config.js";
import { fusionMetrics } from "../core/metrics.js";
import { type RunningTier, startStageTier } from "../core/runtime/stage-tier.js";
import {
  openTier,
  ownBrokerConnection,
  type Resources,
  serveTierHttp,
  startUp,
} from "../core/runtime/startup.js";
import { makeLogger } from "../core/runtime/tier.js";
import { modelKey, replyTopic } from "../core/topics.js";
import { viewsOf } from "../core/views.js";
import type { GatewayConfig } from "./config.js";
import { FusionService } from "./fusion.js";

export { type GatewayConfig, gatewayConfig, gatewayFields, gatewaySchema } from "./config.js";

/** A running gateway: the stage tier's parts where it runs stages, the fusion where it fuses views. */
export interface RunningGateway
  extends Pick<RunningTier, "port" | "bundle" | "client" | "metrics" | "app"> {
  /** The middle stages' request service (absent for a two-stage multi-view bundle). */
  readonly service: { readonly subscribed: boolean };
  readonly pool?: RunningTier["pool"];
  /** The views' fusion (multi-view bundles only). */
  readonly fusion?: FusionService;
  readonly resources: Resources;
  close(): Promise<void>;
}

const middle = {
  tier: "edge",
  defaultRange: (k: number): readonly [number, number] => {
    if (k < 3)
      throw new ConfigError(`a ${k}-stage bundle has no middle stage for a gateway; pass --stages`);
    return [1, k - 2];
  },
};

export async function startGateway(
  config: GatewayConfig,
  log: Logger = makeLogger(config.logLevel, "edge"),
): Promise<RunningGateway> {
  const opened = await openTier(config, "edge", log);
  const { bundle, model } = opened;
  const views = viewsOf(bundle.manifest);
  if (views.count === 1) return startStageTier(config, middle, log, opened);
  const alarms = new Set(
    config.alarm.map((a) => {
      const i = /^\d+$/.test(a) ? Number(a) : bundle.manifest.labels.indexOf(a);
      if (i < 0 || i >= bundle.manifest.labels.length)
        throw new ConfigError(`--alarm: "${a}" is not a label of the bundle`);
      return i;
    }),
  );
  const fusionOf = (client: RunningTier["client"], resources: Resources) => {
    const fusion = new FusionService({
      client,
      bundle,
      model,
      policy: opened.policy,
      windowMs: config.fusionWindowMs,
      recentCaptures: config.recentCaptures,
      forward: { dtype: config.dtype, compression: config.compression },
      maxFrameBytes: config.maxFrameBytes,
      replyTo: replyTopic(model, `fusion-${process.pid}-${Math.random().toString(36).slice(2, 8)}`),
      alarms,
      metrics: opened.metrics,
      fusion: fusionMetrics(opened.metrics.registry),
      log,
    });
    resources.own("view fusion", fusion, (f) => f.drain());
    fusion.start();
    log.info(
      {
        model: modelKey(model),
        views: views.count,
        subscription: fusion.subscription,
        windowMs: config.fusionWindowMs,
      },
      "fusing views",
    );
    return fusion;
  };
  const k = bundle.manifest.stages.length;
  if (k >= 3 || config.stages !== undefined) {
    // Middle stages to run as well: the stage tier, with the fusion on its broker connection.
    const tier = await startStageTier(config, middle, log, opened);
    try {
      return { ...tier, fusion: fusionOf(tier.client, tier.resources) };
    } catch (err) {
      await tier.close();
      throw err;
    }
  }
  return startUp(async (resources) => {
    const client = ownBrokerConnection(
      resources,
      config,
      `ddnn-edge-${model.name}-${process.pid}`,
      opened.metrics,
      log,
    );
    const fusion = fusionOf(client, resources);
    const { app, port } = await serveTierHttp(resources, {
      ready: () => [
        ...(client.connected ? [] : ["broker disconnected"]),
        ...(client.connected && !fusion.subscribed
          ? ["not subscribed to the views topic yet"]
          : []),
      ],
      registry: opened.metrics.registry,
      port: config.httpPort,
      host: config.httpHost,
      bodyLimit: config.maxFrameBytes * 4,
    });
    return { port, bundle, client, metrics: opened.metrics, app, fusion, service: fusion };
  });
}
