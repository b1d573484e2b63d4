/** `ddnn server`, `ddnn gateway`, `ddnn agent`: one tier per process, as the operator runs them. */

import { maskUrl } from "../core/bundle/download.js";
import { loadConfig, type Program, printable, programHelp, wantsHelp } from "../core/config.js";
import { safeBrokerUrl } from "../core/runtime/mqtt.js";
import { makeLogger } from "../core/runtime/tier.js";
import { type AgentConfig, agentConfig } from "../device-agent/config.js";
import { startAgent } from "../device-agent/main.js";
import { type GatewayConfig, gatewayConfig, startGateway } from "../gateway/gateway.js";
import { type ServerConfig, serverConfig } from "../server/config.js";
import { startServer } from "../server/server.js";

interface Tier<C> {
  readonly name: string;
  readonly about: string;
  readonly config: Program;
  start(config: C): Promise<{ close(): Promise<void> }>;
}

const tiers = {
  server: {
    name: "server",
    about: "the server tier: worker pool over MQTT, and the Open Inference Protocol v2 over HTTP",
    config: serverConfig,
    start: (c) => startServer(c, makeLogger(c.logLevel, "server")),
  } satisfies Tier<ServerConfig>,
  gateway: {
    name: "gateway",
    about: "the edge tier: middle stage(s), exits or forwards to the next stage",
    config: gatewayConfig,
    start: (c) => startGateway(c, makeLogger(c.logLevel, "edge")),
  } satisfies Tier<GatewayConfig>,
  agent: {
    name: "agent",
    about: "the device tier: first stage(s), answers or offloads; HTTP, replay and MQTT inputs",
    config: agentConfig,
    start: (c) => startAgent(c, {}, makeLogger(c.logLevel, "device")),
  } satisfies Tier<AgentConfig>,
};

export type TierName = keyof typeof tiers;

export function isTier(name: string | undefined): name is TierName {
  return name !== undefined && name in tiers;
}

/** The configuration of `ddnn <name>`: its fields, and so every variable it reads. */
export function tierProgram(name: TierName): Program {
  return tiers[name].config;
}

/**
 * What `ddnn <name> ARGV` runs with in environment `env`, or the ConfigError it stops with: the
 * loading `runTier` does, for the operator's Pod contract test.
 */
export function loadTierConfig(
  name: TierName,
  argv: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): Record<string, unknown> {
  return loadConfig(tiers[name].config, argv, env);
}

export async function runTier(
  name: TierName,
  argv: readonly string[],
  out: (s: string) => void,
): Promise<number> {
  const tier = tiers[name] as Tier<Record<string, unknown>>;
  if (wantsHelp(argv)) {
    out(
      programHelp(tier.config, {
        title: `ddnn ${tier.name}: ${tier.about}`,
        usage: `ddnn ${tier.name} [flags]`,
      }),
    );
    return 0;
  }
  const config = loadTierConfig(name, argv);
  process.stderr.write(
    `${JSON.stringify({
      msg: "configuration",
      tier: name,
      config: printable(tier.config, {
        ...config,
        // URLs may carry credentials: the log shows neither user name nor password.
        ...(typeof config.broker === "string" ? { broker: safeBrokerUrl(config.broker) } : {}),
        ...(typeof config.bundle === "string" ? { bundle: maskUrl(config.bundle) } : {}),
      }),
    })}\n`,
  );
  // Signals are heard from the start: one that comes while the tier starts stops it once it is up.
  let signalled: ((signal: string) => void) | undefined;
  let early: string | undefined;
  const onSignal = (signal: string) => {
    if (signalled) signalled(signal);
    else early ??= signal;
  };
  process.once("SIGTERM", () => onSignal("SIGTERM"));
  process.once("SIGINT", () => onSignal("SIGINT"));
  const running = await tier.start(config);
  return new Promise((resolve) => {
    signalled = (signal: string) => {
      process.stderr.write(
        `${JSON.stringify({ msg: "shutting down: answering in-flight requests", signal })}\n`,
      );
      running.close().then(
        () => resolve(0),
        () => resolve(1),
      );
    };
    if (early) signalled(early);
  });
}
