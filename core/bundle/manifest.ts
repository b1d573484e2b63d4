import { z } from "zod";

/** The manifest file name inside every bundle. */
export const MANIFEST_FILE = "ddnn.json";
export const BUNDLE_FORMAT = "ddnn-bundle/v1";

const sha256Hex = z
  .string()
  .regex(/^[0-9a-f]{64}$/, "must be 64 lowercase hex characters (sha256)");
const tensorName = z.string().min(1, "must be a non-empty tensor name");
const threshold = z
  .number()
  .refine((t) => t >= 0 && t <= 1, { message: "must be between 0 and 1" });
const relativeFile = z
  .string()
  .min(1)
  .refine((f) => !f.startsWith("/") && !f.split(/[\\/]/).includes(".."), {
    message: "must be a path inside the bundle (no leading / and no ..)",
  });

const inputSchema = z.looseObject({
  shape: z.array(z.number().int().positive()).min(1, "must have at least one dimension"),
  dtype: z.literal("float32"),
  scale: z.number().positive().finite(),
  mean: z.array(z.number().finite()).min(1),
  std: z.array(z.number().positive("must be > 0").finite()).min(1),
});

const stageSchema = z.looseObject({
  name: z.string().regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, {
    message: "must be a lowercase DNS label (a-z, 0-9, -), as it names topics and tiers",
  }),
  file: relativeFile,
  sha256: sha256Hex,
  input: tensorName,
  features: tensorName.optional(),
  logits: tensorName,
  exit: z.looseObject({ threshold }).optional(),
});

/** How the local aggregator merges the devices' exit logits (docs/bundle-views.md). */
export const LOCAL_AGGREGATIONS = ["max", "avg"] as const;
/** How the devices' features become the next stage's input (docs/bundle-views.md). */
export const FEATURE_AGGREGATIONS = ["concat", "max", "avg"] as const;

const viewDeviceSchema = z.looseObject({ file: relativeFile, sha256: sha256Hex });

/**
 * The optional `views` block of a multi-view (horizontal) bundle, docs/bundle-views.md: `count`
 * end devices each run their own stage 0 (`devices[v]`, view order) on their own view; the local
 * aggregator merges their logits and answers when stages[0].exit says so, otherwise their merged
 * features feed stages[1]. A bundle without the block has one view: stage 0 on one device.
 */
const viewsSchema = z.looseObject({
  count: z
    .number()
    .int()
    .min(2, "must be at least 2 (a bundle without a views block has one view)"),
  localAggregation: z.enum(LOCAL_AGGREGATIONS),
  featureAggregation: z.enum(FEATURE_AGGREGATIONS),
  devices: z.array(viewDeviceSchema).min(2, "needs one entry per view"),
});

/** Contract 1 (`ddnn-bundle/v1`). Unknown fields are kept so newer writers lose nothing. */
export const manifestSchema = z
  .looseObject({
    format: z.literal(BUNDLE_FORMAT),
    name: z.string().min(1),
    version: z.string().min(1),
    labels: z.array(z.string()).min(2, "needs at least two labels (the exit rule divides by ln C)"),
    input: inputSchema,
    stages: z.array(stageSchema).min(1, "needs at least one stage"),
    views: viewsSchema.optional(),
    evaluation: z.looseObject({}).optional(),
  })
  .superRefine((m, ctx) => {
    const channels = m.input.shape[0] ?? 1;
    for (const key of ["mean", "std"] as const) {
      const n = m.input[key].length;
      if (n !== 1 && n !== channels) {
        ctx.addIssue({
          code: "custom",
          path: ["input", key],
          message: `has ${n} values; input.shape[0] says ${channels} channels (give 1 or ${channels})`,
        });
      }
    }
    const seenNames = new Set<string>();
    const seenFiles = new Set<string>();
    m.stages.forEach((s, i) => {
      const last = i === m.stages.length - 1;
      if (seenNames.has(s.name)) {
        ctx.addIssue({
          code: "custom",
          path: ["stages", i, "name"],
          message: `"${s.name}" is used by an earlier stage`,
        });
      }
      if (seenFiles.has(s.file)) {
        ctx.addIssue({
          code: "custom",
          path: ["stages", i, "file"],
          message: `"${s.file}" is used by an earlier stage`,
        });
      }
      seenNames.add(s.name);
      seenFiles.add(s.file);
      if (last && s.exit !== undefined) {
        ctx.addIssue({
          code: "custom",
          path: ["stages", i, "exit"],
          message: "the last stage always answers and must not have an exit",
        });
      }
      if (!last && s.exit === undefined) {
        ctx.addIssue({
          code: "custom",
          path: ["stages", i, "exit"],
          message: "is required on every stage but the last",
        });
      }
      if (!last && s.features === undefined) {
        ctx.addIssue({
          code: "custom",
          path: ["stages", i, "features"],
          message: "is required on every stage but the last (the next stage reads it)",
        });
      }
    });
    if (m.views) checkViews(m.views, m.stages, seenFiles, ctx);
  });

function checkViews(
  views: z.infer<typeof viewsSchema>,
  stages: readonly z.infer<typeof stageSchema>[],
  stageFiles: ReadonlySet<string>,
  ctx: z.RefinementCtx,
): void {
  if (views.devices.length !== views.count) {
    ctx.addIssue({
      code: "custom",
      path: ["views", "devices"],
      message: `has ${views.devices.length} entries; views.count says ${views.count} (one per view)`,
    });
  }
  const first = stages[0];
  const view0 = views.devices[0];
  if (first && view0 && (view0.file !== first.file || view0.sha256 !== first.sha256)) {
    ctx.addIssue({
      code: "custom",
      path: ["views", "devices", 0],
      message: `must be stages[0] (file "${first.file}" and its sha256): view 0 runs the bundle's own stage 0`,
    });
  }
  const seen = new Set<string>();
  views.devices.forEach((d, v) => {
    if (v > 0 && (seen.has(d.file) || stageFiles.has(d.file))) {
      ctx.addIssue({
        code: "custom",
        path: ["views", "devices", v, "file"],
        message: `"${d.file}" is used by ${seen.has(d.file) ? "an earlier view" : "a stage"}; each view has its own file`,
      });
    }
    seen.add(d.file);
  });
}

export type Manifest = z.infer<typeof manifestSchema>;
export type StageSpec = Manifest["stages"][number];
export type InputSpec = Manifest["input"];
export type ViewsSpec = NonNullable<Manifest["views"]>;
export type LocalAggregation = (typeof LOCAL_AGGREGATIONS)[number];
export type FeatureAggregation = (typeof FEATURE_AGGREGATIONS)[number];

/** A bad bundle: names the file and, where there is one, the manifest field at fault. */
export class BundleError extends Error {
  constructor(
    readonly file: string,
    readonly field: string | undefined,
    readonly detail: string,
  ) {
    super(field === undefined ? `${file}: ${detail}` : `${file}: ${field}: ${detail}`);
    this.name = "BundleError";
  }
}

/** Formats a zod issue path the way a user reads JSON: `stages[1].exit.threshold`. */
export function fieldPath(path: readonly PropertyKey[]): string {
  return path
    .map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`))
    .join("");
}

/** Parses manifest bytes; throws a BundleError naming the first bad field. */
export function parseManifest(bytes: Uint8Array, file = MANIFEST_FILE): Manifest {
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw new BundleError(file, undefined, `not valid UTF-8 JSON (${(err as Error).message})`);
  }
  const parsed = manifestSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = issue ? fieldPath(issue.path) || "(root)" : "(root)";
    const got = issue ? describeValue(json, issue.path) : "";
    const more = parsed.error.issues.length > 1 ? ` (+${parsed.error.issues.length - 1} more)` : "";
    throw new BundleError(file, field, `${issue?.message ?? "invalid"}${got}${more}`);
  }
  return parsed.data;
}

function describeValue(root: unknown, path: readonly PropertyKey[]): string {
  let v: unknown = root;
  for (const key of path) {
    if (v === null || typeof v !== "object") return "";
    v = (v as Record<PropertyKey, unknown>)[key];
  }
  if (v === undefined) return "";
  const text = JSON.stringify(v);
  return text.length > 60 ? "" : ` (got ${text})`;
}
