import type { Manifest } from "../core/bundle/manifest.js";
import { type DDNNModelSpec, TIERS, type Tier } from "./spec.js";

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
}

export function bundleFacts(manifest: Manifest, digest: string): BundleFacts {
  return {
    digest,
    name: manifest.name,
    version: manifest.version,
    stages: manifest.stages.map((s) => s.name),
    exits: manifest.stages.filter((s) => s.exit !== undefined).map((s) => s.name),
  };
}

/**
 * Checks the spec's placement and exits against the bundle's stages and returns the tier plan,
 * or a message a user can act on. Data flows device -> edge -> server, so a later stage may not
 * run on an earlier tier than the stage before it.
 */
export function planTiers(
  spec: Pick<DDNNModelSpec, "placement" | "exits">,
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
