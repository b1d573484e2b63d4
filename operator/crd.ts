import { stringify } from "yaml";
import { z } from "zod";
import {
  API_VERSION,
  ddnnModelSpecSchema,
  ddnnModelStatusSchema,
  GROUP,
  KIND,
  PLURAL,
  SHORT_NAME,
  VERSION,
} from "./spec.js";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Schema = { [key: string]: Json };

const SAFE_INT = 9007199254740991;

/**
 * Turns a zod schema into a structural OpenAPI v3 schema the API server accepts: int-or-string
 * unions get x-kubernetes-int-or-string, zod's safe-integer bounds go, and a `pattern` that a
 * CEL `matches` rule already states (with a readable message) is dropped so a user sees one error.
 */
export function openApiSchema(schema: z.ZodType): Schema {
  const json = z.toJSONSchema(schema, {
    target: "openapi-3.0",
    io: "input",
    reused: "inline",
  }) as Schema;
  return structural(json);
}

function structural(node: Schema): Schema {
  const out: Schema = {};
  for (const [key, value] of Object.entries(node)) {
    if (key === "$schema" || key === "id") continue;
    if (key === "properties" && isObject(value)) {
      out.properties = Object.fromEntries(
        Object.entries(value).map(([k, v]) => [k, structural(v as Schema)]),
      );
    } else if ((key === "items" || key === "additionalProperties") && isObject(value)) {
      out[key] = structural(value as Schema);
    } else if (key === "additionalProperties" && value === false) {
      // Structural schemas prune unknown fields already; `false` is not allowed next to properties.
    } else {
      out[key] = value;
    }
  }
  if ((out.minimum === -SAFE_INT || out.minimum === undefined) && out.maximum === SAFE_INT) {
    delete out.minimum;
    delete out.maximum;
  }
  if (out.minimum === -SAFE_INT) delete out.minimum;
  if (Array.isArray(out.anyOf)) {
    const types = out.anyOf.map((s) => (isObject(s) ? s.type : undefined)).sort();
    if (types.length === 2 && types[0] === "integer" && types[1] === "string") {
      const text = out.anyOf.find((s) => isObject(s) && s.type === "string") as Schema;
      delete out.anyOf;
      out["x-kubernetes-int-or-string"] = true;
      out.anyOf = [{ type: "integer" }, { type: "string" }];
      if (typeof text.pattern === "string") out.pattern = text.pattern;
    } else {
      throw new Error(`cannot express anyOf ${JSON.stringify(types)} in a structural schema`);
    }
  }
  const rules = out["x-kubernetes-validations"];
  if (typeof out.pattern === "string" && Array.isArray(rules)) {
    // RegExp.source writes "/" as "\\/"; the CEL rule has the plain pattern.
    const pattern = out.pattern.replaceAll("\\/", "/");
    const stated = rules.some(
      (r) =>
        isObject(r) &&
        typeof r.rule === "string" &&
        r.rule === `self.matches('${pattern.replaceAll("\\", "\\\\")}')`,
    );
    if (stated) delete out.pattern;
  }
  if (out.type === "object" && isObject(out.properties) && Object.keys(out.properties).length === 0)
    delete out.properties;
  return out;
}

function isObject(v: unknown): v is Schema {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const CONDITIONS_LIST: Schema = {
  "x-kubernetes-list-type": "map",
  "x-kubernetes-list-map-keys": ["type"],
};

/** The CustomResourceDefinition for DDNNModel, as committed in crds/. */
export function buildCrd(): Schema {
  const status = openApiSchema(ddnnModelStatusSchema);
  const statusProps = status.properties as Schema;
  statusProps.conditions = { ...(statusProps.conditions as Schema), ...CONDITIONS_LIST };
  ((statusProps.conditions as Schema).items as Schema).properties = {
    ...(((statusProps.conditions as Schema).items as Schema).properties as Schema),
    lastTransitionTime: { type: "string", format: "date-time" },
  };
  return {
    apiVersion: "apiextensions.k8s.io/v1",
    kind: "CustomResourceDefinition",
    metadata: {
      name: `${PLURAL}.${GROUP}`,
      labels: { "app.kubernetes.io/name": "ddnn-fog", "app.kubernetes.io/part-of": "ddnn-fog" },
    },
    spec: {
      group: GROUP,
      names: {
        kind: KIND,
        listKind: `${KIND}List`,
        plural: PLURAL,
        singular: KIND.toLowerCase(),
        shortNames: [SHORT_NAME],
        categories: ["ddnn-fog"],
      },
      scope: "Namespaced",
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: [
            {
              name: "Ready",
              type: "string",
              jsonPath: '.status.conditions[?(@.type=="Ready")].status',
            },
            {
              name: "Reason",
              type: "string",
              jsonPath: '.status.conditions[?(@.type=="Ready")].reason',
              priority: 1,
            },
            {
              name: "Devices",
              type: "string",
              description: "device agents ready/desired",
              jsonPath: ".status.devicesReady",
            },
            {
              name: "Bundle",
              type: "string",
              description: "first 12 hex characters of the rolled-out bundle digest",
              jsonPath: ".status.bundleDigestShort",
            },
            { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" },
          ],
          schema: {
            openAPIV3Schema: {
              type: "object",
              description: `${KIND} (${API_VERSION}): an early-exit distributed DNN placed on the device, edge and server tiers of a fog.`,
              properties: {
                apiVersion: { type: "string" },
                kind: { type: "string" },
                metadata: { type: "object" },
                spec: openApiSchema(ddnnModelSpecSchema),
                status: status,
              },
              required: ["spec"],
              "x-kubernetes-validations": [
                {
                  rule: "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                  message:
                    "metadata.name must be a DNS label starting with a letter (a-z, 0-9, -): it names Services such as <name>-server",
                },
                {
                  rule: "self.metadata.name.size() <= 56",
                  message:
                    "metadata.name may have at most 56 characters: <name>-broker must fit in 63",
                },
              ],
            },
          },
        },
      ],
    },
  };
}

export const CRD_FILE = "crds/fog.ddnn.io_ddnnmodels.yaml";

/** The CRD file's text: a header saying where it comes from, then the YAML. */
export function renderCrd(): string {
  return `# Generated by scripts/gen-crd.ts from operator/spec.ts; do not edit (run: npm run gen:crd).\n${stringify(buildCrd(), { lineWidth: 0 })}`;
}
