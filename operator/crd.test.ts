import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { packageRoot } from "../cli/paths.js";
import { buildCrd, CRD_FILE, renderCrd } from "./crd.js";
import { ddnnModelSpecSchema } from "./spec.js";

type Node = Record<string, unknown>;

function walk(node: unknown, visit: (n: Node, path: string) => void, path = ""): void {
  if (Array.isArray(node)) {
    for (const [i, n] of node.entries()) walk(n, visit, `${path}[${i}]`);
  } else if (node && typeof node === "object") {
    visit(node as Node, path);
    for (const [k, v] of Object.entries(node)) walk(v, visit, `${path}.${k}`);
  }
}

describe("the CRD", () => {
  it("in crds/ is what scripts/gen-crd.ts makes from operator/spec.ts (run npm run gen:crd)", () => {
    expect(readFileSync(join(packageRoot(), CRD_FILE), "utf8")).toBe(renderCrd());
  });

  it("has a structural schema: no $schema, no additionalProperties: false, anyOf only for int-or-string", () => {
    const schema = (buildCrd() as { spec: { versions: { schema: unknown }[] } }).spec.versions[0]!
      .schema;
    walk(schema, (n, path) => {
      expect(n.$schema, path).toBeUndefined();
      expect(n.additionalProperties, path).not.toBe(false);
      if (n.anyOf) expect(n["x-kubernetes-int-or-string"], path).toBe(true);
      for (const rule of (n["x-kubernetes-validations"] as Node[] | undefined) ?? [])
        expect(typeof rule.message, `${path} ${rule.rule}`).toBe("string");
    });
  });

  it("names, short name, status subresource and printer columns", () => {
    const crd = buildCrd() as {
      spec: { names: { shortNames: string[] }; scope: string; versions: Node[] };
    };
    expect(crd.spec.names.shortNames).toEqual(["ddnn"]);
    expect(crd.spec.scope).toBe("Namespaced");
    const v = crd.spec.versions[0]!;
    expect(v.subresources).toEqual({ status: {} });
    expect((v.additionalPrinterColumns as { name: string }[]).map((c) => c.name)).toEqual([
      "Ready",
      "Reason",
      "Devices",
      "Bundle",
      "Age",
    ]);
  });

  it("accepts every example through the same zod schema the operator parses with", () => {
    for (const file of [
      "ddnnmodel.yaml",
      "ddnnmodel-configmap.yaml",
      "ddnnmodel-server-only.yaml",
    ]) {
      const docs = readFileSync(join(packageRoot(), "examples", file), "utf8").split(/^---$/m);
      const model = docs.map((d) => parse(d)).find((d) => d?.kind === "DDNNModel");
      const r = ddnnModelSpecSchema.safeParse(model.spec);
      expect(r.success, `${file}: ${r.error?.message}`).toBe(true);
    }
  });
});
