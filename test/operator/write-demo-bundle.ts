/** Writes examples/demo-bundle.tar.gz and prints the digest that examples/*.yaml pin. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEMO_BUNDLE, packReproducibly, writeDemoBundle } from "./demo-bundle.js";

const dir = mkdtempSync(join(tmpdir(), "ddnn-demo-"));
const digest = writeDemoBundle(dir);
packReproducibly(dir, DEMO_BUNDLE);
rmSync(dir, { recursive: true, force: true });
process.stdout.write(`wrote ${DEMO_BUNDLE}\nsha256 of ddnn.json: ${digest}\n`);
