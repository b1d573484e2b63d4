/**
 * A bad command line that no configuration field describes (flags that go together, an input that
 * does not fit the bundle): printed as one line, exit code 2. Flags themselves are parsed and
 * checked by the program's configuration (core/config.ts), which stops with a ConfigError.
 */
export class UsageError extends Error {
  override name = "UsageError";
}
