/** `ddnn server`, `ddnn gateway`, `ddnn agent`: one tier per process, as the operator runs them. */

import { maskUrl } from "../core/bundle/download.js";
import { type FieldTable, fieldHelp, loadConfig, printable } from "../core/config.js";
import { safeBrokerUrl } from "../core/runtime/mqtt.js";
import { makeLogger } from "../core/runtime/tier.js";
import { type AgentConfig, agentFields, agentSchema } from "../device-agent/config.js";
import { startAgent } from "../device-agent/main.js";
import {
  type GatewayConfig,
  gatewayFields,
  gatewaySchema,
  startGateway,
} from "../gateway/gateway.js";
import { type ServerConfig, serverFields, serverSchema } from "../server/config.js";
import { startServer } from "../server/server.js";

interface Tier<C> {
  readonly name: string;
  readonly about: string;
  readonly fields: FieldTable;
  load(argv: readonly string[]): C;
  start(config: C): Promise<{ close(): Promise<void> }>;
}

const tiers = {
  server: {
    name: "server",
    about: "the server tier: worker pool over MQTT, and the Open Inference Protocol v2 over HTTP",
    fields: serverFields,
    load: (argv) => loadConfig(serverSchema, serverFields, argv),
    start: (c) => startServer(c, makeLogger(c.logLevel, "server")),
  } satisfies Tier<ServerConfig>,
  gateway: {
    name: "gateway",
    about: "the edge tier: middle stage(s), exits or forwards to the next stage",
    fields: gatewayFields,
    load: (argv) => loadConfig(gatewaySchema, gatewayFields, argv),
    start: (c) => startGateway(c, makeLogger(c.logLevel, "edge")),
  } satisfies Tier<GatewayConfig>,
  agent: {
    name: "agent",
    about: "the device tier: first stage(s), answers or offloads; HTTP, replay and MQTT inputs",
    fields: agentFields,
    load: (argv) => loadConfig(agentSchema, agentFields, argv),
    start: (c) => startAgent(c, {}, makeLogger(c.logLevel, "device")),
  } satisfies Tier<AgentConfig>,
};

export type TierName = keyof typeof tiers;

export function isTier(name: string | undefined): name is TierName {
  return name !== undefined && name in tiers;
}

export async function runTier(
  name: TierName,
  argv: readonly string[],
  out: (s: string) => void,
): Promise<number> {
  const tier = tiers[name] as Tier<Record<string, unknown>>;
  if (argv.includes("--help") || argv.includes("-h")) {
    out(
      `ddnn ${tier.name}: ${tier.about}\n\nEvery flag can also be set by its environment variable or in a YAML/JSON file given with --config (env DDNN_CONFIG).\n\n${fieldHelp(tier.fields)}\n`,
    );
    return 0;
  }
  const config = tier.load(argv);
  process.stderr.write(
    `${JSON.stringify({
      msg: "configuration",
      tier: name,
      config: printable(
        {
          ...config,
          // URLs may carry credentials: the log shows neither user name nor password.
          ...(typeof config.broker === "string" ? { broker: safeBrokerUrl(config.broker) } : {}),
          ...(typeof config.bundle === "string" ? { bundle: maskUrl(config.bundle) } : {}),
        },
        tier.fields,
      ),
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
