#!/usr/bin/env node
import { BundleError } from "../core/bundle/manifest.js";
import { UsageError } from "./args.js";
import { evalHelp, runEval } from "./eval.js";

const usage = `ddnn: run early-exit distributed DNNs across devices, edge gateways and servers

Usage: ddnn <command> [flags]

Commands:
  eval      accuracy table of a bundle on an idx data set (per-stage exit rate and accuracy,
            Overall, Ideal), a threshold sweep, per-sample predictions

Run "ddnn <command> --help" for a command's flags.
`;

async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  const out = (text: string) => process.stdout.write(`${text}\n`);
  switch (command) {
    case "eval":
      return runEval(rest, out);
    case undefined:
    case "help":
    case "--help":
    case "-h":
      out(`${usage}\n${command === undefined ? "" : evalHelp}`);
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
    const known = err instanceof UsageError || err instanceof BundleError;
    process.stderr.write(
      `ddnn: ${known ? (err as Error).message : String((err as Error)?.stack ?? err)}\n`,
    );
    process.exitCode = err instanceof UsageError ? 2 : 1;
  },
);
