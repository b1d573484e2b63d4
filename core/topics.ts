/** Contract 3: MQTT topic names. */
import { ConfigError } from "./config.js";

/** `ns/name` as written in frame headers and configuration. */
export interface ModelRef {
  readonly namespace: string;
  readonly name: string;
}

// A topic level: no separator, no wildcard, no NUL (MQTT forbids it in topic names).
const level = /^[^/+#]+$/;

export function parseModelRef(ref: string): ModelRef {
  const [namespace, name, ...rest] = ref.split("/");
  const ok = (s: string | undefined): s is string => !!s && level.test(s) && !s.includes("\0");
  if (!ok(namespace) || !ok(name) || rest.length > 0) {
    throw new ConfigError(`model "${ref}" must be <namespace>/<name> without MQTT wildcards`);
  }
  return { namespace, name };
}

export function modelKey(model: ModelRef): string {
  return `${model.namespace}/${model.name}`;
}

/** Requests for a stage: `ddnn/<namespace>/<model>/<stage>/req`. */
export function requestTopic(model: ModelRef, stage: string): string {
  return `ddnn/${model.namespace}/${model.name}/${stage}/req`;
}

/** The shared-subscription filter that spreads a stage's requests over its workers. */
export function sharedRequestFilter(model: ModelRef, stage: string): string {
  return `$share/${model.name}-${stage}/${requestTopic(model, stage)}`;
}

/** Default reply topic of a device: `ddnn/<namespace>/<model>/reply/<device id>`. */
export function replyTopic(model: ModelRef, deviceId: string): string {
  if (!level.test(deviceId))
    throw new ConfigError(`device id "${deviceId}" must not contain / + # or NUL`);
  return `ddnn/${model.namespace}/${model.name}/reply/${deviceId}`;
}

/** Where a view's agent gets the gateway's fused answers: its reply topic + `/views`. */
export function viewsReplyTopic(model: ModelRef, deviceId: string): string {
  return `${replyTopic(model, deviceId)}/views`;
}

/**
 * View requests of a multi-view bundle (docs/protocol.md "view requests"), every device's to one
 * gateway: `ddnn/<namespace>/<model>/views`. Never a shared subscription: the views of one capture
 * must meet in one gateway.
 */
export function viewsTopic(model: ModelRef): string {
  return `ddnn/${model.namespace}/${model.name}/views`;
}

/** Alarms and events: `ddnn/<namespace>/<model>/events`. */
export function eventsTopic(model: ModelRef): string {
  return `ddnn/${model.namespace}/${model.name}/events`;
}
