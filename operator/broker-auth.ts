/**
 * Who may do what on a managed broker (docs/security.md): one broker identity per device node, one
 * for the edge gateways and one for the servers of a DDNNModel, each with a Mosquitto ACL that
 * grants exactly the topics of Contract 3 its tier uses, and nothing of any other model.
 *
 * Passwords are derived, not stored: HMAC-SHA256 of the identity under the operator's broker key,
 * so the same model, key and node always give the same password (a reconcile with nothing changed
 * writes nothing), a password never needs to be read back from the API server, and a new key
 * rotates every password at once. The broker only ever gets PBKDF2 hashes (Mosquitto's `$7$`
 * format, as mosquitto_passwd writes them).
 */
import { createHmac, pbkdf2Sync } from "node:crypto";
import {
  eventsTopic,
  type ModelRef,
  replyTopic,
  requestTopic,
  viewsReplyTopic,
  viewsTopic,
} from "../core/topics.js";
import type { TierPlan } from "./placement.js";

/** A broker identity: the MQTT user name and what it may do. */
export interface BrokerIdentity {
  readonly username: string;
  /** Topic filters the identity may subscribe to and receive from. */
  readonly read: readonly string[];
  /** Topics the identity may publish to. */
  readonly write: readonly string[];
}

export interface BrokerIdentities {
  readonly server?: BrokerIdentity;
  readonly edge?: BrokerIdentity;
  /**
   * `ddnn profile --kubeconfig`'s simulated devices (cli/profile.ts): what any device may do, for
   * any device id, since they pick their ids per run. Only in the credentials Secret.
   */
  readonly profile: BrokerIdentity;
  /** Device node name -> its identity. */
  readonly devices: ReadonlyMap<string, BrokerIdentity>;
}

/**
 * User names carry the model (`<namespace>/<model>/<tier>`), so no identity of one DDNNModel
 * exists on another's broker, or could be confused with one on a shared broker. Mosquitto's
 * password file separates the name from the hash with `:`; Kubernetes names never contain one.
 */
export function identityName(model: ModelRef, tier: "server" | "edge" | "profile"): string;
export function identityName(model: ModelRef, tier: "device", node: string): string;
export function identityName(model: ModelRef, tier: string, node?: string): string {
  const base = `${model.namespace}/${model.name}/${tier}`;
  return node === undefined ? base : `${base}/${node}`;
}

/** The device id of view `view`'s agent on `node` of a multi-view model. */
export const viewDeviceId = (node: string, view: number) => `${node}-view${view}`;

/** The first stage a tier runs and the stage its features go to next, from the tier plan. */
function stagesOf(plan: TierPlan, tier: "device" | "edge" | "server") {
  const order = [...plan.device, ...plan.edge, ...plan.server];
  const own = plan[tier];
  if (own.length === 0) return undefined;
  const last = order.indexOf(own[own.length - 1]!);
  return { first: own[0]!, next: order[last + 1] };
}

/**
 * The identities of a model: a device may publish only to the request topic of the stage after
 * its own, and to the events topic; it may read only its own reply topic (and its own MQTT input
 * topic). A gateway or server may read its first stage's requests and publish replies (to any
 * device of this model: a reply goes where the request's replyTo says, which is a device's reply
 * topic), and a gateway the requests of the stage after its own. With `views` (a multi-view
 * model) the devices publish to the views topic instead, which only the gateway reads; it fuses
 * and sends on to the first stage after the device's.
 */
export function brokerIdentities(
  model: ModelRef,
  plan: TierPlan,
  deviceIds: readonly string[],
  views = false,
): BrokerIdentities {
  const replies = `ddnn/${model.namespace}/${model.name}/reply/+`;
  // viewsReplyTopic of any device: where the fusing gateway answers each view.
  const viewReplies = `${replies}/views`;
  const events = eventsTopic(model);
  // A device sends what the stage after its own takes; a device that runs no stage of the plan
  // (a camera, a board outside the cluster) sends inputs to the model's first stage.
  const device = stagesOf(plan, "device");
  const worker = (tier: "edge" | "server"): BrokerIdentity | undefined => {
    const s = stagesOf(plan, tier);
    if (tier === "edge" && views) {
      // The fusing gateway runs even with no edge stage: it reads every view, sends the fused
      // features on to the stage after the devices' (its own first edge stage, if it has one,
      // which it then reads and sends on from) under a reply topic of its own (so it reads
      // replies too), answers each view's device, and publishes one event per capture.
      const sends = [...new Set([device?.next, s?.next].filter((x) => x !== undefined))];
      return {
        username: identityName(model, tier),
        read: [viewsTopic(model), replies, ...(s ? [requestTopic(model, s.first)] : [])],
        write: [replies, viewReplies, events, ...sends.map((x) => requestTopic(model, x))],
      };
    }
    if (!s) return undefined;
    return {
      username: identityName(model, tier),
      read: [requestTopic(model, s.first)],
      write: [replies, ...(s.next ? [requestTopic(model, s.next)] : [])],
    };
  };
  const devices = new Map<string, BrokerIdentity>();
  const nextStage = device ? device.next : [...plan.edge, ...plan.server][0];
  const next = views ? viewsTopic(model) : nextStage && requestTopic(model, nextStage);
  for (const node of [...new Set(deviceIds)].sort()) {
    const input = `ddnn/${model.namespace}/${model.name}/input/${node}`;
    devices.set(node, {
      username: identityName(model, "device", node),
      read: [replyTopic(model, node), ...(views ? [viewsReplyTopic(model, node)] : []), input],
      write: [events, `${input}/result`, ...(next ? [next] : [])],
    });
  }
  const anyInput = `ddnn/${model.namespace}/${model.name}/input/+`;
  const profile: BrokerIdentity = {
    username: identityName(model, "profile"),
    read: [replies, ...(views ? [viewReplies] : []), anyInput],
    write: [events, `${anyInput}/result`, ...(next ? [next] : [])],
  };
  const server = worker("server");
  const edge = worker("edge");
  return { ...(server ? { server } : {}), ...(edge ? { edge } : {}), profile, devices };
}

export function allIdentities(ids: BrokerIdentities): BrokerIdentity[] {
  return [
    ...(ids.server ? [ids.server] : []),
    ...(ids.edge ? [ids.edge] : []),
    ids.profile,
    ...ids.devices.values(),
  ];
}

/** The identity's password under `key`: 32 random-looking bytes, base64url. */
export function identityPassword(key: Uint8Array, username: string): string {
  return createHmac("sha256", key).update(`ddnn-broker-password\0${username}`).digest("base64url");
}

/** Mosquitto's default PBKDF2 iterations (mosquitto_passwd); the passwords are 256-bit random. */
const PBKDF2_ITERATIONS = 101;

/**
 * A password_file line in Mosquitto 2's `$7$` format (PBKDF2-SHA512). The salt is derived from the
 * key and user name, so the file is the same on every build for the same key.
 */
export function passwordFileLine(key: Uint8Array, username: string): string {
  const salt = createHmac("sha256", key)
    .update(`ddnn-broker-salt\0${username}`)
    .digest()
    .subarray(0, 12);
  const hash = pbkdf2Sync(identityPassword(key, username), salt, PBKDF2_ITERATIONS, 64, "sha512");
  return `${username}:$7$${PBKDF2_ITERATIONS}$${salt.toString("base64")}$${hash.toString("base64")}`;
}

export function passwordFile(key: Uint8Array, ids: BrokerIdentities): string {
  return `${allIdentities(ids)
    .map((id) => passwordFileLine(key, id.username))
    .join("\n")}\n`;
}

/**
 * The acl_file: one `user` section per identity, nothing for anyone else (Mosquitto denies what
 * no line grants once an acl_file is set). No `pattern` lines: a pattern would apply to every
 * user, and Mosquitto's %u/%c substitute strings a client chooses at least in part.
 */
export function aclFile(ids: BrokerIdentities): string {
  const sections = allIdentities(ids).map((id) =>
    [
      `user ${id.username}`,
      ...id.read.map((t) => `topic read ${t}`),
      ...id.write.map((t) => `topic write ${t}`),
    ].join("\n"),
  );
  return `# Written by ddnn-operator: one section per broker identity (docs/security.md).\n${sections.join("\n\n")}\n`;
}
