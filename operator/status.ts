import type { V1DaemonSet, V1Deployment } from "@kubernetes/client-node";
import { type BundleFacts, type TierPlan, viewCount } from "./placement.js";
import { canonicalJson } from "./semantic.js";
import {
  CONDITION_TYPES,
  type Condition,
  type ConditionType,
  type DDNNModel,
  type DDNNModelStatus,
} from "./spec.js";

/**
 * Status as a pure function of what the operator saw: the bundle check and the owned workloads'
 * own status (written by the Deployment and DaemonSet controllers). Conditions keep their
 * lastTransitionTime unless their status changes.
 */

type Wanted = Omit<Condition, "lastTransitionTime" | "observedGeneration">;

export type BundleCheck =
  | { ok: true; facts: BundleFacts; plan: TierPlan }
  | { ok: false; reason: string; message: string };

export interface Observed {
  broker?: V1Deployment;
  server?: V1Deployment;
  edge?: V1Deployment;
  device?: V1DaemonSet;
  /**
   * A multi-view model's device DaemonSets, one entry per view in view order (the DaemonSet
   * absent where it does not exist yet); empty or absent for a one-view model.
   */
  views?: readonly { view: number; daemonSet?: V1DaemonSet }[];
}

/** Readiness of a Deployment as `kubectl rollout status` judges it. */
export function deploymentReady(
  d: V1Deployment | undefined,
  what: string,
): Wanted & { type: string } {
  if (!d)
    return {
      type: "",
      status: "False",
      reason: "NotCreated",
      message: `${what} Deployment does not exist yet`,
    };
  const want = d.spec?.replicas ?? 1;
  const s = d.status ?? {};
  const name = d.metadata?.name;
  if ((s.observedGeneration ?? 0) < (d.metadata?.generation ?? 0))
    return {
      type: "",
      status: "False",
      reason: "Progressing",
      message: `Deployment ${name}: the new spec is not observed yet`,
    };
  const updated = s.updatedReplicas ?? 0;
  const available = s.availableReplicas ?? 0;
  const total = s.replicas ?? 0;
  if (updated < want)
    return {
      type: "",
      status: "False",
      reason: "Progressing",
      message: `Deployment ${name}: ${updated}/${want} replicas updated`,
    };
  if (total > updated)
    return {
      type: "",
      status: "False",
      reason: "Progressing",
      message: `Deployment ${name}: ${total - updated} old replicas pending termination`,
    };
  if (available < want)
    return {
      type: "",
      status: "False",
      reason: "NotReady",
      message: `Deployment ${name}: ${available}/${want} replicas available`,
    };
  return {
    type: "",
    status: "True",
    reason: "Available",
    message: `Deployment ${name}: ${available}/${want} replicas available`,
  };
}

export function devicesOf(ds: V1DaemonSet | undefined): {
  desired: number;
  ready: number;
  updated: number;
} {
  const s = ds?.status;
  return {
    desired: s?.desiredNumberScheduled ?? 0,
    ready: s?.numberReady ?? 0,
    updated: s?.updatedNumberScheduled ?? 0,
  };
}

function daemonSetReady(ds: V1DaemonSet | undefined, what = "device"): Wanted & { type: string } {
  if (!ds)
    return {
      type: "",
      status: "False",
      reason: "NotCreated",
      message: `${what} DaemonSet does not exist yet`,
    };
  const name = ds.metadata?.name;
  if ((ds.status?.observedGeneration ?? 0) < (ds.metadata?.generation ?? 0))
    return {
      type: "",
      status: "False",
      reason: "Progressing",
      message: `DaemonSet ${name}: the new spec is not observed yet`,
    };
  const d = devicesOf(ds);
  if (d.desired === 0) {
    const selector = Object.entries(ds.spec?.template?.spec?.nodeSelector ?? {})
      .map(([k, v]) => `${k}=${v}`)
      .join(",");
    return {
      type: "",
      status: "True",
      reason: "NoDeviceNodes",
      message: `no node matches the device nodeSelector ${selector}`,
    };
  }
  if (d.updated < d.desired)
    return {
      type: "",
      status: "False",
      reason: "Progressing",
      message: `DaemonSet ${name}: ${d.updated}/${d.desired} device agents updated`,
    };
  if (d.ready < d.desired)
    return {
      type: "",
      status: "False",
      reason: "NotReady",
      message: `DaemonSet ${name}: ${d.ready}/${d.desired} device agents ready`,
    };
  return {
    type: "",
    status: "True",
    reason: "Ready",
    message: `DaemonSet ${name}: ${d.ready}/${d.desired} device agents ready`,
  };
}

/**
 * A multi-view model's devices are ready when every view's DaemonSet is: a view whose
 * nodeSelector matches no node is not (its captures would be fused without it).
 */
function viewsReady(views: NonNullable<Observed["views"]>): Wanted & { type: string } {
  for (const { view, daemonSet } of views) {
    const r = daemonSetReady(daemonSet, `view ${view}'s device`);
    if (r.status === "True" && r.reason !== "NoDeviceNodes") continue;
    if (r.reason === "NoDeviceNodes")
      return {
        type: "",
        status: "False",
        reason: "NoViewNodes",
        message: `view ${view}: ${r.message}, so its captures are fused without it`,
      };
    return { ...r, message: daemonSet ? `view ${view}: ${r.message}` : r.message };
  }
  const counts = views.map(({ view, daemonSet }) => {
    const d = devicesOf(daemonSet);
    return `view ${view} ${d.ready}/${d.desired}`;
  });
  return {
    type: "",
    status: "True",
    reason: "Ready",
    message: `device agents of every view ready: ${counts.join(", ")}`,
  };
}

function notPlaced(tier: string): Wanted & { type: string } {
  return {
    type: "",
    status: "True",
    reason: "NotPlaced",
    message: `no stage runs on the ${tier} tier`,
  };
}

/** The conditions the model should carry now, in CONDITION_TYPES order. */
export function wantedConditions(
  model: DDNNModel,
  check: BundleCheck,
  observed: Observed,
): Wanted[] {
  const out = new Map<ConditionType, Wanted>();
  const plan = check.ok ? check.plan : undefined;
  out.set(
    "BundleVerified",
    check.ok
      ? {
          type: "BundleVerified",
          status: "True",
          reason: "Verified",
          message: `${check.facts.name} ${check.facts.version} (${check.facts.digest.slice(0, 12)}): stages ${check.facts.stages.join(", ")}`,
        }
      : {
          type: "BundleVerified",
          status: "False",
          reason: check.reason,
          message: `${check.message}; nothing new is rolled out`,
        },
  );
  const broker = model.spec.broker.external
    ? {
        type: "",
        status: "True" as const,
        reason: "External",
        message: `external broker ${model.spec.broker.external.url} (not probed by the operator)`,
      }
    : deploymentReady(observed.broker, "broker");
  out.set("BrokerReady", { ...broker, type: "BrokerReady" });
  // Without a verified plan, report the workloads that are running (the previous version).
  const views = observed.views ?? [];
  // A multi-view model's gateway fuses the views whether or not it runs a stage.
  const fusing = check.ok ? viewCount(check.facts) > 1 : false;
  const has = (tier: "server" | "edge" | "device") =>
    plan
      ? plan[tier].length > 0 || (tier === "edge" && fusing)
      : tier === "device"
        ? observed.device !== undefined || views.length > 0
        : observed[tier] !== undefined;
  out.set("ServerReady", {
    ...(has("server") ? deploymentReady(observed.server, "server") : notPlaced("server")),
    type: "ServerReady",
  });
  out.set("EdgeReady", {
    ...(has("edge") ? deploymentReady(observed.edge, "edge") : notPlaced("edge")),
    type: "EdgeReady",
  });
  out.set("DevicesReady", {
    ...(!has("device")
      ? notPlaced("device")
      : views.length > 0
        ? viewsReady(views)
        : daemonSetReady(observed.device)),
    type: "DevicesReady",
  });
  const failing = CONDITION_TYPES.filter((t) => t !== "Ready" && out.get(t)!.status !== "True");
  const first = failing[0];
  out.set(
    "Ready",
    first === undefined
      ? {
          type: "Ready",
          status: "True",
          reason: "Ready",
          message: "bundle verified and every tier ready",
        }
      : {
          type: "Ready",
          status: "False",
          reason:
            first === "BundleVerified"
              ? "BundleNotVerified"
              : `${first.replace(/Ready$/, "")}NotReady`,
          message: out.get(first)!.message,
        },
  );
  return CONDITION_TYPES.map((t) => out.get(t)!);
}

/** Carries lastTransitionTime over from the old conditions when a condition's status is unchanged. */
export function mergeConditions(
  old: readonly Condition[] | undefined,
  wanted: readonly Wanted[],
  generation: number,
  now: Date,
): Condition[] {
  return wanted.map((w) => {
    const prev = old?.find((c) => c.type === w.type);
    return {
      type: w.type,
      status: w.status,
      observedGeneration: generation,
      lastTransitionTime:
        prev && prev.status === w.status
          ? prev.lastTransitionTime
          : now.toISOString().replace(/\.\d{3}Z$/, "Z"),
      reason: w.reason,
      message: w.message,
    };
  });
}

/** The whole status the model should have; `previous` supplies what a failed check keeps. */
export function desiredStatus(
  model: DDNNModel,
  check: BundleCheck,
  observed: Observed,
  now: Date,
  /** Why applying or pruning an owned object failed in this reconcile, if it did. */
  applyError?: string,
): DDNNModelStatus {
  const previous = model.status ?? {};
  const wanted = wantedConditions(model, check, observed).map((c) =>
    c.type === "Ready" && applyError !== undefined
      ? { ...c, status: "False" as const, reason: "ApplyFailed", message: applyError }
      : c,
  );
  const conditions = mergeConditions(previous.conditions, wanted, model.metadata.generation, now);
  const views = (observed.views ?? []).map(({ view, daemonSet }) => ({
    view,
    ...devicesOf(daemonSet),
  }));
  const devices =
    views.length > 0
      ? {
          desired: views.reduce((n, v) => n + v.desired, 0),
          ready: views.reduce((n, v) => n + v.ready, 0),
          updated: views.reduce((n, v) => n + v.updated, 0),
        }
      : devicesOf(observed.device);
  const status: DDNNModelStatus = {
    observedGeneration: model.metadata.generation,
    conditions,
    devices,
    devicesReady: `${devices.ready}/${devices.desired}`,
    ...(views.length > 0 ? { views } : {}),
  };
  const digest = check.ok ? check.facts.digest : previous.bundleDigest;
  if (digest) {
    status.bundleDigest = digest;
    status.bundleDigestShort = digest.slice(0, 12);
  }
  const bundle = check.ok
    ? { name: check.facts.name, version: check.facts.version }
    : previous.bundle;
  if (bundle) status.bundle = bundle;
  return status;
}

/**
 * The status of a model whose spec the operator cannot read (it passed the CRD's schema but not
 * the operator's own parse): Ready=False with reason InvalidSpec and the parse error, for this
 * generation. Nothing was evaluated, so every other condition and field stays as it was (each
 * condition's observedGeneration says which generation it describes).
 */
export function invalidSpecStatus(
  previous: DDNNModelStatus | undefined,
  generation: number,
  error: string,
  now: Date,
): DDNNModelStatus {
  const before = previous ?? {};
  const [ready] = mergeConditions(
    before.conditions,
    [{ type: "Ready", status: "False", reason: "InvalidSpec", message: error }],
    generation,
    now,
  );
  return {
    ...before,
    observedGeneration: generation,
    conditions: [ready!, ...(before.conditions ?? []).filter((c) => c.type !== "Ready")],
  };
}

export function sameStatus(a: DDNNModelStatus | undefined, b: DDNNModelStatus): boolean {
  return canonicalJson(a ?? {}) === canonicalJson(b);
}

export function condition(
  status: DDNNModelStatus | undefined,
  type: ConditionType,
): Condition | undefined {
  return status?.conditions?.find((c) => c.type === type);
}
