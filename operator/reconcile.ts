import type { V1DaemonSet, V1Deployment, V1Secret } from "@kubernetes/client-node";
import {
  buildOwnedObjects,
  deviceViewName,
  FIELD_MANAGER,
  type OperatorImages,
  OWNED_KINDS,
  type OwnedObject,
  objectName,
  type ProxyEnv,
  VIEW_LABEL,
} from "./builders.js";
import type { BundleVerifier } from "./bundle-source.js";
import { type DeviceIdentitySettings, nodeLabelsOf } from "./device-identity.js";
import type { EventRecorder } from "./events.js";
import { type Informer, objectKey } from "./informer.js";
import { type KubeClient, KubeError, type KubeObject } from "./kube.js";
import { planTiers, viewCount } from "./placement.js";
import type { ReconcileResult } from "./queue.js";
import { isApplied, withAppliedHash } from "./semantic.js";
import {
  API_VERSION,
  brokerCertSecretName,
  type DDNNModel,
  type DDNNModelStatus,
  ddnnModelStatusSchema,
  KIND,
  PLURAL,
  parseModel,
} from "./spec.js";
import {
  type BundleCheck,
  condition,
  desiredStatus,
  invalidSpecStatus,
  type Observed,
  sameStatus,
} from "./status.js";
import type { Issuer } from "./x509.js";

export type OwnedKind = (typeof OWNED_KINDS)[number]["kind"];

export interface Logger {
  info(message: string): void;
  warn(message: string): void;
}

export interface ReconcileContext {
  client: KubeClient;
  models: Informer;
  owned: Record<OwnedKind, Informer>;
  bundles: BundleVerifier;
  images: OperatorImages;
  /** Proxy variables written into the tier Pods. */
  proxy?: ProxyEnv;
  /** The key every managed broker password is derived from (operator/broker-auth.ts). */
  brokerKey?: Uint8Array;
  /** The CA that issues managed brokers' certificates (operator/x509.ts). */
  brokerCa?: Issuer;
  /** The device identity endpoint, for models with broker auth and in-cluster devices. */
  deviceIdentity?: DeviceIdentitySettings;
  /** The Node cache (with the device identity endpoint): which nodes the device tier may use. */
  nodes?: Informer;
  events: EventRecorder;
  log: Logger;
  now?: () => Date;
  /** How soon a model whose bundle failed verification is looked at again. */
  retryBundleMs?: number;
}

/** The reconcile's clock: the context's (tests), else the system's. */
const clock = (ctx: Pick<ReconcileContext, "now">): Date => ctx.now?.() ?? new Date();

function resourceOf(kind: OwnedKind, namespace: string, name?: string) {
  const k = OWNED_KINDS.find((x) => x.kind === kind)!;
  return { apiVersion: k.apiVersion, plural: k.plural, namespace, name };
}

function controlledBy(o: KubeObject, uid: string): boolean {
  return (o.metadata?.ownerReferences ?? []).some((r) => r.controller === true && r.uid === uid);
}

/**
 * One level-based pass over a DDNNModel: verify the bundle, apply every owned object that is not
 * already as built (server-side apply, field manager ddnn-operator, force), delete owned objects
 * the spec no longer asks for, then write status if it changed. Reads come from the watch caches,
 * so a pass over a model where nothing changed makes no request at all.
 */
export async function reconcileModel(ctx: ReconcileContext, key: string): Promise<ReconcileResult> {
  const slash = key.indexOf("/");
  const namespace = key.slice(0, slash);
  const name = key.slice(slash + 1);
  const raw = ctx.models.get(namespace, name);
  // Gone: owner references let the garbage collector remove what it owned.
  if (!raw || raw.metadata?.deletionTimestamp) return {};
  const parsed = parseModel(raw);
  if (!parsed.ok) return reportInvalidSpec(ctx, raw, parsed.error);
  const model = parsed.model;

  const verification = await ctx.bundles.verify(namespace, model.spec.bundle);
  let check: BundleCheck;
  if (verification.ok) {
    const plan = planTiers(model.spec, verification.facts);
    check = plan.ok
      ? { ok: true, facts: verification.facts, plan: plan.plan }
      : { ok: false, reason: plan.reason, message: plan.message };
  } else {
    check = verification;
  }

  const applied: string[] = [];
  const deleted: string[] = [];
  const gone = new Set<string>();
  // A write that fails still gets the status written (Ready=False, ApplyFailed, this generation)
  // before the error goes back to the queue for a retry with backoff.
  let failure: unknown;
  try {
    if (check.ok) {
      const desired = buildOwnedObjects({
        model,
        bundle: check.facts,
        plan: check.plan,
        images: ctx.images,
        ...(ctx.proxy ? { proxy: ctx.proxy } : {}),
        ...(ctx.brokerKey ? { brokerKey: ctx.brokerKey } : {}),
        ...(ctx.deviceIdentity ? { deviceIdentity: ctx.deviceIdentity } : {}),
        ...(ctx.nodes ? { nodes: nodeLabelsOf(ctx.nodes.list()) } : {}),
        ...(ctx.brokerCa ? { brokerCa: ctx.brokerCa } : {}),
        currentBrokerCert: ctx.owned.Secret.get(namespace, brokerCertSecretName(model)) as
          | V1Secret
          | undefined,
        now: clock(ctx),
      }).map((o) => withAppliedHash(o as KubeObject) as OwnedObject & KubeObject);
      for (const obj of desired) {
        const kind = obj.kind as OwnedKind;
        const objName = obj.metadata!.name!;
        const cache = ctx.owned[kind];
        if (isApplied(cache.get(namespace, objName), obj)) continue;
        try {
          await cache.write(namespace, objName, () =>
            ctx.client.apply(resourceOf(kind, namespace, objName), obj, FIELD_MANAGER, true),
          );
        } catch (err) {
          await ctx.events.record(
            model,
            "Warning",
            "ApplyFailed",
            `${kind} ${objName}: ${(err as Error).message}`,
          );
          throw err;
        }
        applied.push(`${kind} ${objName}`);
      }
      const keep = new Set(desired.map((o) => `${o.kind}/${o.metadata!.name}`));
      for (const { kind } of OWNED_KINDS) {
        const stale = ctx.owned[kind].list(
          (o) =>
            o.metadata?.namespace === namespace &&
            controlledBy(o, model.metadata.uid) &&
            !keep.has(`${kind}/${o.metadata?.name}`),
        );
        for (const o of stale) {
          const objName = o.metadata!.name!;
          try {
            await ctx.client.delete(resourceOf(kind, namespace, objName), { uid: o.metadata?.uid });
          } catch (err) {
            if (!(err instanceof KubeError && (err.status === 404 || err.status === 409))) {
              await ctx.events.record(
                model,
                "Warning",
                "DeleteFailed",
                `${kind} ${objName}: ${(err as Error).message}`,
              );
              throw err;
            }
          }
          gone.add(`${kind}/${objName}`);
          deleted.push(`${kind} ${objName}`);
        }
      }
    }
  } catch (err) {
    failure = err;
  }

  const live = <T>(kind: OwnedKind, component: "broker" | "server" | "edge" | "device") => {
    const n = objectName(model, component);
    if (gone.has(`${kind}/${n}`)) return undefined;
    const o = ctx.owned[kind].get(namespace, n);
    return o && controlledBy(o, model.metadata.uid) ? (o as T) : undefined;
  };
  const observed: Observed = {
    broker: live<V1Deployment>("Deployment", "broker"),
    server: live<V1Deployment>("Deployment", "server"),
    edge: live<V1Deployment>("Deployment", "edge"),
    device: live<V1DaemonSet>("DaemonSet", "device"),
    views: observedViews(ctx, model, check, gone),
  };
  const status = desiredStatus(
    model,
    check,
    observed,
    clock(ctx),
    failure === undefined ? undefined : (failure as Error).message,
  );
  if (!sameStatus(model.status, status))
    await writeStatus(ctx, namespace, name, status, model.status);

  if (failure !== undefined) throw failure;
  await recordEvents(ctx, model, status, applied, deleted);
  if (applied.length || deleted.length)
    ctx.log.info(`${key}: applied [${applied.join(", ")}] deleted [${deleted.join(", ")}]`);
  return check.ok ? {} : { requeueAfter: ctx.retryBundleMs ?? 30_000 };
}

/**
 * A multi-view model's view DaemonSets, one per view of the verified bundle (absent where not
 * created yet); without a verified bundle, the view DaemonSets that run (the previous version).
 */
function observedViews(
  ctx: ReconcileContext,
  model: DDNNModel,
  check: BundleCheck,
  gone: ReadonlySet<string>,
): { view: number; daemonSet?: V1DaemonSet }[] {
  const { namespace } = model.metadata;
  const own = (o: KubeObject | undefined) =>
    o && controlledBy(o, model.metadata.uid) && !gone.has(`DaemonSet/${o.metadata?.name}`)
      ? (o as V1DaemonSet)
      : undefined;
  if (check.ok) {
    const k = viewCount(check.facts);
    if (k === 1) return [];
    return Array.from({ length: k }, (_, view) => {
      const daemonSet = own(ctx.owned.DaemonSet.get(namespace, deviceViewName(model, view)));
      return daemonSet ? { view, daemonSet } : { view };
    });
  }
  return ctx.owned.DaemonSet.list(
    (o) =>
      o.metadata?.namespace === namespace &&
      o.metadata?.labels?.[VIEW_LABEL] !== undefined &&
      own(o) !== undefined,
  )
    .map((o) => ({ view: Number(o.metadata!.labels![VIEW_LABEL]), daemonSet: o as V1DaemonSet }))
    .sort((a, b) => a.view - b.view);
}

/**
 * A model the API server accepted but the operator cannot read: Ready=False/InvalidSpec with the
 * parse error, and a Warning Event when that verdict is new. Owned objects are left as they are
 * (what runs keeps running); the next change of the object brings the next pass.
 */
async function reportInvalidSpec(
  ctx: ReconcileContext,
  raw: KubeObject,
  error: string,
): Promise<ReconcileResult> {
  const meta = raw.metadata ?? {};
  const { name, namespace, uid } = meta;
  // Only an object without identity (never one from the API server) has nowhere to report.
  if (!name || !namespace || !uid) {
    ctx.log.warn(`${objectKey(raw)}: cannot read the object: ${error}`);
    return {};
  }
  const previous = ddnnModelStatusSchema.safeParse(raw.status ?? {});
  const before = previous.success ? previous.data : {};
  const status = invalidSpecStatus(before, meta.generation ?? 0, error, clock(ctx));
  if (sameStatus(before, status)) return {};
  ctx.log.warn(`${namespace}/${name}: invalid spec: ${error}`);
  await writeStatus(ctx, namespace, name, status);
  const was = condition(before, "Ready");
  if (was?.reason !== "InvalidSpec" || was.message !== error) {
    // The recorder needs only the object's identity, which an unreadable spec still has.
    const subject = {
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: { ...meta, name, namespace, uid, generation: meta.generation ?? 0 },
    } as DDNNModel;
    await ctx.events.record(subject, "Warning", "InvalidSpec", error);
  }
  return {};
}

/**
 * Writes the model's status subresource and keeps the answer in the model cache. A merge patch
 * keeps what it does not name, so a field of `previous` that `status` no longer has (status.views
 * of a model that went back to one view) is sent as null: left, it would differ from the wanted
 * status on every pass, and every pass would write it again.
 */
async function writeStatus(
  ctx: ReconcileContext,
  namespace: string,
  name: string,
  status: DDNNModelStatus,
  previous: DDNNModelStatus = {},
): Promise<void> {
  const gone = Object.keys(previous).filter((k) => !(k in status));
  const patch = { ...status, ...Object.fromEntries(gone.map((k) => [k, null])) };
  await ctx.models.write(namespace, name, () =>
    ctx.client.mergePatch(
      { apiVersion: API_VERSION, plural: PLURAL, namespace, name, subresource: "status" },
      { status: patch },
      FIELD_MANAGER,
    ),
  );
}

async function recordEvents(
  ctx: ReconcileContext,
  model: DDNNModel,
  status: ReturnType<typeof desiredStatus>,
  applied: string[],
  deleted: string[],
): Promise<void> {
  const before = model.status;
  const verified = condition(status, "BundleVerified")!;
  const wasVerified = condition(before, "BundleVerified");
  if (
    wasVerified?.status !== verified.status ||
    wasVerified?.reason !== verified.reason ||
    wasVerified?.message !== verified.message
  ) {
    if (verified.status === "True")
      await ctx.events.record(model, "Normal", "BundleVerified", verified.message);
    else await ctx.events.record(model, "Warning", verified.reason, verified.message);
  }
  if (applied.length)
    await ctx.events.record(
      model,
      "Normal",
      "Applied",
      `applied ${applied.join(", ")} (generation ${model.metadata.generation})`,
    );
  if (deleted.length)
    await ctx.events.record(
      model,
      "Normal",
      "Deleted",
      `deleted ${deleted.join(", ")}: the spec no longer asks for them`,
    );
  const ready = condition(status, "Ready")!;
  const wasReady = condition(before, "Ready");
  if (ready.status === "True" && wasReady?.status !== "True")
    await ctx.events.record(model, "Normal", "Ready", ready.message);
}
