import type { Manifest } from "../core/bundle/manifest.js";
import { viewsOf } from "../core/views.js";
import { type DDNNModelSpec, TIERS, type Tier, VIEW_NODE_LABEL } from "./spec.js";

/** Which stages each tier runs, in bundle order. A tier with no stage gets no workload. */
export type TierPlan = Record<Tier, readonly string[]>;

/** What the operator keeps of a verified bundle: enough to build workloads and report status. */
export interface BundleFacts {
  digest: string;
  name: string;
  version: string;
  /** Stage names in bundle order. */
  stages: readonly string[];
  /** Stages that have an exit (all but the last). */
  exits: readonly string[];
  /** K, the bundle's views (ddnn.json views.count); absent for a bundle without a views block (K = 1). */
  views?: number;
}

/** K of a bundle: 1 unless its manifest has a views block. */
export const viewCount = (bundle: Pick<BundleFacts, "views">): number => bundle.views ?? 1;

export function bundleFacts(manifest: Manifest, digest: string): BundleFacts {
  return {
    digest,
    name: manifest.name,
    version: manifest.version,
    stages: manifest.stages.map((s) => s.name),
    exits: manifest.stages.filter((s) => s.exit !== undefined).map((s) => s.name),
    ...(manifest.views ? { views: viewsOf(manifest).count } : {}),
  };
}

/** Why a placement cannot run: the stages' placement, or (multi-view bundles) the views'. */
export type PlacementReason = "PlacementMismatch" | "ViewPlacementMismatch";

type PlanSpec = Pick<DDNNModelSpec, "placement" | "exits"> & {
  tiers?: { device?: Pick<DDNNModelSpec["tiers"]["device"], "views"> };
};

/**
 * Checks the spec's placement and exits against the bundle's stages and returns the tier plan,
 * or a message a user can act on. Data flows device -> edge -> server, so a later stage may not
 * run on an earlier tier than the stage before it.
 */
export function planTiers(
  spec: PlanSpec,
  bundle: Pick<BundleFacts, "stages" | "exits" | "views">,
): { ok: true; plan: TierPlan } | { ok: false; reason: PlacementReason; message: string } {
  const stagesPlan = planStages(spec, bundle);
  if (!stagesPlan.ok) return { ...stagesPlan, reason: "PlacementMismatch" };
  const views = checkViews(spec, bundle, stagesPlan.plan);
  return views === undefined
    ? stagesPlan
    : { ok: false, reason: "ViewPlacementMismatch", message: views };
}

const list = (xs: readonly (string | number)[]) => xs.join(", ");

/**
 * What only the bundle can tell about tiers.device.views (the CRD checked that the entries are
 * views 0..N-1, each once): N equals the bundle's K, and the stages run where a multi-view
 * bundle needs them, stage 0 alone on the device tier (one agent per view) and, with middle
 * stages, at least one on the edge (the gateway that fuses the views runs them).
 */
function checkViews(
  spec: PlanSpec,
  bundle: Pick<BundleFacts, "stages" | "views">,
  plan: TierPlan,
): string | undefined {
  const k = viewCount(bundle);
  const placed = (spec.tiers?.device?.views ?? []).map((p) => p.view);
  if (k === 1) {
    return placed.length === 0
      ? undefined
      : `tiers.device.views places ${placed.length} views but the bundle has one view (no views block in its ddnn.json): leave tiers.device.views out`;
  }
  if (placed.length === 0) {
    return `the bundle has ${k} views (ddnn.json views) but tiers.device.views places none: say which device nodes see which view, for example views: [${Array.from({ length: k }, (_, v) => `{view: ${v}}`).join(", ")}] with each view's nodes labelled ${VIEW_NODE_LABEL}=<view>`;
  }
  const all = Array.from({ length: k }, (_, v) => v);
  const missing = all.filter((v) => !placed.includes(v));
  const extra = placed.filter((v) => v >= k).sort((a, b) => a - b);
  if (missing.length > 0 || extra.length > 0) {
    const wrong = [
      ...(missing.length > 0 ? [`does not place view(s) ${list(missing)}`] : []),
      ...(extra.length > 0
        ? [`places view(s) ${list(extra)}, which the bundle does not have`]
        : []),
    ];
    return `the bundle has ${k} views but tiers.device.views ${wrong.join(" and ")}: place each of views 0..${k - 1} once`;
  }
  const first = bundle.stages[0]!;
  if (plan.device.length !== 1 || plan.device[0] !== first) {
    return plan.device.includes(first)
      ? `a multi-view bundle's device tier runs stage ${first} only (each view's agent runs it, the gateway fuses them): place stage(s) ${list(plan.device.slice(1))} on edge or server`
      : `a multi-view bundle's first stage ${first} runs on the device tier, one agent per view: place it on device`;
  }
  const middle = bundle.stages.slice(1, -1);
  if (middle.length > 0 && plan.edge.length === 0) {
    return `the gateway that fuses the views also runs the bundle's middle stage(s) ${list(middle)}: place them on edge`;
  }
  return undefined;
}

function planStages(
  spec: PlanSpec,
  bundle: Pick<BundleFacts, "stages" | "exits">,
): { ok: true; plan: TierPlan } | { ok: false; message: string } {
  const known = new Set(bundle.stages);
  const unknown = Object.keys(spec.placement).filter((s) => !known.has(s));
  if (unknown.length > 0) {
    return {
      ok: false,
      message: `placement names stage(s) ${unknown.join(", ")} that the bundle does not have (bundle stages: ${bundle.stages.join(", ")})`,
    };
  }
  const unplaced = bundle.stages.filter((s) => spec.placement[s] === undefined);
  if (unplaced.length > 0) {
    return {
      ok: false,
      message: `placement does not place bundle stage(s) ${unplaced.join(", ")}; every stage needs a tier`,
    };
  }
  const withExit = new Set(bundle.exits);
  const badExits = Object.keys(spec.exits ?? {}).filter((s) => !withExit.has(s));
  if (badExits.length > 0) {
    return {
      ok: false,
      message: `exits sets a threshold for stage(s) ${badExits.join(", ")} that have no exit in the bundle (the last stage always answers)`,
    };
  }
  let previous = 0;
  for (const [i, stage] of bundle.stages.entries()) {
    const tier = TIERS.indexOf(spec.placement[stage]!);
    if (tier < previous) {
      return {
        ok: false,
        message: `stage ${stage} runs on ${TIERS[tier]} but stage ${bundle.stages[i - 1]} before it runs on ${TIERS[previous]}; data flows device -> edge -> server`,
      };
    }
    previous = tier;
  }
  const plan = { device: [], edge: [], server: [] } as Record<Tier, string[]>;
  for (const stage of bundle.stages) plan[spec.placement[stage]!].push(stage);
  return { ok: true, plan };
}
