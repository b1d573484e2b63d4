/** `ddnn operator` from source, for tests that need real operator processes (vite-node runs it). */
import { runOperator } from "../../cli/operator.js";

runOperator(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`ddnn operator: ${(err as Error)?.message ?? err}\n`);
    process.exit(1);
  },
);
