/**
 * The one start-up path of every tier (server, gateway, device agent): each resource is owned by
 * a `Resources` stack the moment it is acquired, so a failure at any later step releases exactly
 * what was acquired, in reverse order, and the same stack is the tier's orderly shutdown.
 * (An AsyncDisposableStack, which Node 20 lacks.)
 */
import type { FastifyInstance, FastifyPluginAsync } from "fastify";
import type { MqttClient } from "mqtt";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import type { VerifiedBundle } from "../bundle/read.js";
import { openBundleSource } from "../bundle/source.js";
import { brokerInsecurity, ConfigError, program, tierFields } from "../config.js";
import type { ExitPolicy } from "../exit.js";
import { type TierMetrics, tierMetrics } from "../metrics.js";
import { exitPolicyFor } from "../pipeline.js";
import { type ModelRef, modelKey } from "../topics.js";
import { healthPlugin, httpApp, listen, metricsPlugin, type Readiness } from "./http.js";
import { safeBrokerUrl } from "./mqtt.js";
import { checkBrokerConfig, connectTierBroker, resolveModel } from "./tier.js";

type Release = () => Promise<void> | void;

export class Resources {
  private readonly held: { name: string; release: Release }[] = [];
  private releasing: Promise<void> | undefined;

  /** Records how to release `thing`, acquired just now; returns it. */
  own<T>(name: string, thing: T, release: (thing: T) => Promise<void> | void): T {
    if (this.releasing) throw new Error(`cannot acquire ${name}: the tier is shutting down`);
    this.held.push({ name, release: () => release(thing) });
    return thing;
  }

  /** What is held, oldest first (for tests and logs). */
  get names(): string[] {
    return this.held.map((h) => h.name);
  }

  /**
   * Releases everything, newest first, each step awaited. A step that fails does not stop the
   * others; the first failure is rethrown at the end. Calling it again returns the same promise.
   */
  release(): Promise<void> {
    this.releasing ??= (async () => {
      let first: unknown;
      for (const { name, release } of this.held.splice(0).reverse()) {
        try {
          await release();
        } catch (err) {
          first ??= new Error(`releasing ${name}: ${(err as Error).message}`, { cause: err });
        }
      }
      if (first !== undefined) throw first;
    })();
    return this.releasing;
  }
}

/**
 * Runs a tier's start-up with a fresh stack. If `build` throws, everything it acquired is
 * released before the error is rethrown; otherwise the tier closes by releasing the stack.
 */
export async function startUp<T extends object>(
  build: (resources: Resources) => Promise<T>,
): Promise<T & { resources: Resources; close(): Promise<void> }> {
  const resources = new Resources();
  let built: T;
  try {
    built = await build(resources);
  } catch (err) {
    // Nothing half-started may keep the process alive: workers, a reconnecting client, a port.
    await resources.release().catch(() => {});
    throw err;
  }
  return Object.assign(built, { resources, close: () => resources.release() });
}

/** Configuration every tier shares at start-up. */
export interface TierBasics {
  bundle: string;
  bundleDigest?: string | undefined;
  bundleCache?: string | undefined;
  model?: string | undefined;
  broker: string;
  brokerUsername?: string | undefined;
  brokerPassword?: string | undefined;
  brokerCa?: string | undefined;
  brokerTlsName?: string | undefined;
  threshold: Record<string, number>;
  /** Accept a plaintext or anonymous broker connection to another machine. */
  insecure?: boolean | undefined;
}

const INSECURE_ENV = program({ insecure: tierFields.insecure }).env.insecure;

/**
 * Stops a tier whose broker connection would cross a network in plaintext or without
 * credentials, unless `--insecure` says that is meant: one line naming the URL, what is wrong and
 * the way out. The URL is printed without credentials.
 */
export function refuseInsecureBroker(config: TierBasics): void {
  const credentials =
    (config.brokerUsername ?? "") !== "" ||
    (config.brokerPassword ?? "") !== "" ||
    /\/\/[^/@]+@/.test(config.broker);
  const problem = brokerInsecurity(config.broker, credentials);
  if (problem === undefined || config.insecure === true) return;
  throw new ConfigError(
    `refusing an insecure broker connection to ${safeBrokerUrl(config.broker)}: ${problem} to a host that is not loopback; use mqtts:// with DDNN_BROKER_USERNAME and DDNN_BROKER_PASSWORD, or pass --insecure (${INSECURE_ENV}=true) to accept it`,
  );
}

/** The first steps of every tier: broker settings checked, bundle verified, model, exits, metrics. */
export async function openTier(
  config: TierBasics,
  tier: string,
  log: Logger,
): Promise<{
  bundle: VerifiedBundle;
  model: ModelRef;
  policy: ExitPolicy;
  metrics: TierMetrics;
}> {
  // Wrong broker settings stop the tier before it loads a model.
  checkBrokerConfig(config);
  refuseInsecureBroker(config);
  const bundle = await openBundleSource(config.bundle, config.bundleDigest, {
    cacheDir: config.bundleCache,
    log,
  });
  const model = resolveModel(bundle.manifest, config.model);
  const policy = exitPolicyFor(bundle.manifest, config.threshold);
  return { bundle, model, policy, metrics: tierMetrics(tier, modelKey(model)) };
}

/** The tier's broker connection, owned by `resources`. */
export function ownBrokerConnection(
  resources: Resources,
  config: TierBasics,
  clientIdPrefix: string,
  metrics: TierMetrics,
  log: Logger,
): MqttClient {
  return resources.own(
    "broker connection",
    connectTierBroker(config, clientIdPrefix, metrics, log),
    // Force when disconnected: unacknowledged QoS 1 messages would hold end() forever.
    (client) => client.endAsync(!client.connected),
  );
}

/** /healthz, /readyz, /metrics and the tier's own routes, listening; owned by `resources`. */
export async function serveTierHttp(
  resources: Resources,
  o: {
    readonly ready: Readiness;
    readonly registry: Registry;
    readonly plugins?: readonly FastifyPluginAsync[];
    readonly port: number;
    readonly host: string;
    readonly bodyLimit?: number;
  },
): Promise<{ app: FastifyInstance; port: number }> {
  const app = resources.own("HTTP server", httpApp(o.bodyLimit), (a) => a.close());
  await app.register(healthPlugin(o.ready));
  await app.register(metricsPlugin(o.registry));
  for (const plugin of o.plugins ?? []) await app.register(plugin);
  return { app, port: await listen(app, o.port, o.host) };
}
