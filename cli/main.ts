#!/usr/bin/env node
import { UsageError } from "./args.js";
import { runBundle } from "./bundle.js";
import { runEval } from "./eval.js";
import { describeFailure } from "./failure.js";
import { runOperator } from "./operator.js";
import { isTier, runTier } from "./tiers.js";
import { runUp } from "./up.js";

const usage = `ddnn: run early-exit distributed DNNs across devices, edge gateways and servers

Usage: ddnn <command> [flags]

Commands:
  up        the whole fog on one machine (embedded broker, server, gateway, device agents
            replaying the shipped sample), ending with the paper's Table II for the run
  profile   Table II measured on a fog it starts (probe requests for Local and Ideal), the
            threshold sweep from that one pass, server capacity, advice as a DDNNModel patch
  eval      accuracy table of a bundle on an idx data set (per-stage exit rate and accuracy,
            Overall, Ideal), a threshold sweep, per-sample predictions
  server    the server tier (MQTT worker pool, HTTP inference)
  gateway   the edge tier (middle stages)
  agent     the device tier (first stage, offload, local fallback)
  operator  the Kubernetes controller for DDNNModel resources
  codegen   codegen c: a bundle's device stage as a standalone C99 program (ddnn-device)
  bundle    bundle pack DIR: verify a bundle, pack it as a ConfigMap (or .tar.gz) for a cluster

Run "ddnn <command> --help" for a command's flags.
`;

async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  const out = (text: string) => process.stdout.write(`${text}\n`);
  if (isTier(command)) return runTier(command, rest, out);
  switch (command) {
    case "eval":
      return runEval(rest, out);
    case "up":
      return runUp(rest, out);
    case "profile":
      return (await import("./profile.js")).runProfile(rest, out);
    case "operator":
      return runOperator(rest);
    case "codegen":
      return (await import("./codegen.js")).runCodegen(rest, out);
    case "bundle":
      return runBundle(rest, out);
    case undefined:
    case "help":
    case "--help":
    case "-h":
      out(usage);
      return command === undefined ? 2 : 0;
    default:
      throw new UsageError(`unknown command "${command}" (try: ddnn --help)`);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const failure = describeFailure(err);
    process.stderr.write(failure.text);
    // Exit now: a tier that failed half-way may still hold worker threads and a reconnecting client.
    process.exit(failure.code);
  },
);
