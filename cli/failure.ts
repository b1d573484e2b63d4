/** How `ddnn` reports an error that ends a command: one line for the user's mistakes, a stack for bugs. */
import { BundleError } from "../core/bundle/manifest.js";
import { ConfigError } from "../core/config.js";
import { UsageError } from "./args.js";

export interface Failure {
  /** 2: the user's input is wrong (flags, configuration, bundle); 1: anything else, a bug. */
  readonly code: 1 | 2;
  /** What goes to stderr, ending with a newline. */
  readonly text: string;
}

export function describeFailure(err: unknown): Failure {
  if (err instanceof UsageError || err instanceof ConfigError || err instanceof BundleError)
    return { code: 2, text: `ddnn: ${err.message}\n` };
  // Anything else is unexpected: the stack is what a bug report needs.
  const detail = err instanceof Error ? (err.stack ?? `${err.name}: ${err.message}`) : String(err);
  return { code: 1, text: `ddnn: ${detail}\n` };
}
