/** What the server, gateway and device agent programs share: common configuration and start-up. */
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import type { MqttClient } from "mqtt";
import { type Logger, pino } from "pino";
import type { Manifest } from "../bundle/manifest.js";
import { ConfigError, fieldName, tierFields } from "../config.js";
import type { TierMetrics } from "../metrics.js";
import { type ModelRef, parseModelRef } from "../topics.js";
import {
  type BrokerOptions,
  connectBroker,
  refuseCa,
  refuseTlsName,
  safeBrokerUrl,
} from "./mqtt.js";

/** Resolves stage names to a contiguous index range; `fallback` when no names are given. */
export function stageRange(
  manifest: Manifest,
  names: readonly string[] | undefined,
  fallback: readonly [number, number],
): { from: number; to: number } {
  const all = manifest.stages.map((s) => s.name);
  if (!names || names.length === 0) {
    const [from, to] = fallback;
    if (from < 0 || to >= all.length || from > to)
      throw new ConfigError(
        `this tier has no default stages in a ${all.length}-stage bundle; pass --stages`,
      );
    return { from, to };
  }
  const idx = names.map((n) => {
    const i = all.indexOf(n);
    if (i === -1)
      throw new ConfigError(`--stages: the bundle has no stage "${n}" (stages: ${all.join(", ")})`);
    return i;
  });
  idx.forEach((v, k) => {
    if (k > 0 && v !== (idx[k - 1] as number) + 1)
      throw new ConfigError(
        `--stages: ${names.join(", ")} are not consecutive stages of the bundle`,
      );
  });
  return { from: idx[0]!, to: idx[idx.length - 1]! };
}

export function resolveModel(manifest: Manifest, model: string | undefined): ModelRef {
  return parseModelRef(model ?? `default/${manifest.name}`);
}

export function makeLogger(level: string, tier: string): Logger {
  return pino({ level, base: { tier, host: hostname() } }, pino.destination(2));
}

/** Reads and parses a PEM CA file for an mqtts:// broker, or says which file is wrong and why. */
export function readBrokerCa(path: string): string {
  const where = `broker CA file ${path} (${fieldName("brokerCa", tierFields.brokerCa)})`;
  let pem: string;
  try {
    pem = readFileSync(path, "utf8");
  } catch (err) {
    throw new ConfigError(
      `${where}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    );
  }
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0)
    throw new ConfigError(
      `${where}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)`,
    );
  blocks.forEach((block, i) => {
    try {
      new X509Certificate(block);
    } catch (err) {
      throw new ConfigError(
        `${where}: certificate ${i + 1} of ${blocks.length} is corrupt (${(err as Error).message})`,
      );
    }
  });
  return pem;
}

/**
 * Refuses broker settings that are wrong without connecting (a CA for a non-TLS URL, an unreadable
 * or corrupt CA file), so a tier stops before it loads a model or starts workers.
 */
export function checkBrokerConfig(config: {
  broker: string;
  brokerCa?: string | undefined;
  brokerTlsName?: string | undefined;
}): void {
  const scheme = config.broker.slice(0, config.broker.indexOf(":") + 1);
  if (config.brokerTlsName !== undefined && scheme !== "mqtts:") refuseTlsName(scheme);
  if (config.brokerCa === undefined) return;
  if (scheme !== "mqtts:") refuseCa(scheme);
  readBrokerCa(config.brokerCa);
}

/** What went wrong with a connection, in words: some socket errors carry only a code, or several causes. */
export function describeError(err: Error & { code?: unknown; errors?: unknown }): string {
  if (err.message) return err.message;
  if (Array.isArray(err.errors) && err.errors.length > 0)
    return err.errors.map((e: Error) => describeError(e)).join("; ");
  return err.code !== undefined ? String(err.code) : err.name;
}

/** A tier's broker settings (credentials, CA, certificate name) as connectBroker's options. */
export interface BrokerSettings {
  brokerUsername?: string | undefined;
  brokerPassword?: string | undefined;
  brokerCa?: string | undefined;
  brokerTlsName?: string | undefined;
}

export function brokerClientOptions(
  config: BrokerSettings,
): Pick<BrokerOptions, "username" | "password" | "ca" | "servername"> {
  return {
    ...(config.brokerUsername !== undefined ? { username: config.brokerUsername } : {}),
    ...(config.brokerPassword !== undefined ? { password: config.brokerPassword } : {}),
    ...(config.brokerCa !== undefined ? { ca: readBrokerCa(config.brokerCa) } : {}),
    ...(config.brokerTlsName !== undefined ? { servername: config.brokerTlsName } : {}),
  };
}

/**
 * A tier's broker connection: credentials and CA from the configuration, the
 * ddnn_broker_connected gauge kept up to date, each (re)connection logged without secrets, and
 * why a connection fails or breaks (refused, unreachable, certificate, credentials, reset) logged
 * once per cause between successful connections rather than on every retry.
 */
export function connectTierBroker(
  config: BrokerSettings & { broker: string },
  clientIdPrefix: string,
  metrics: TierMetrics,
  log: Logger,
): MqttClient {
  const broker = safeBrokerUrl(config.broker);
  const client = connectBroker({
    url: config.broker,
    clientId: `${clientIdPrefix}-${Math.random().toString(16).slice(2, 8)}`,
    ...brokerClientOptions(config),
  });
  // Causes already logged since the last successful connection: retries do not repeat them.
  const logged = new Set<string>();
  client.on("connect", () => {
    logged.clear();
    metrics.brokerConnected.set(1);
    log.info({ broker }, "connected to the broker");
  });
  client.on("error", (err) => {
    const error = describeError(err);
    if (logged.has(error)) return;
    if (logged.size < 16) logged.add(error);
    log.warn({ broker, error }, "broker connection failed; reconnecting with backoff");
  });
  client.on("close", () => metrics.brokerConnected.set(0));
  return client;
}
