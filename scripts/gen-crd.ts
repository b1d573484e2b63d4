/**
 * Writes crds/fog.ddnn.io_ddnnmodels.yaml from operator/spec.ts (the zod schemas are the one
 * source of truth). `npm run gen:crd` runs it; operator/crd.test.ts fails when the file is stale.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { packageRoot } from "../cli/paths.js";
import { CRD_FILE, renderCrd } from "../operator/crd.js";

const path = join(packageRoot(), CRD_FILE);
writeFileSync(path, renderCrd());
process.stdout.write(`wrote ${CRD_FILE}\n`);
