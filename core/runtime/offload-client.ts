/**
 * The device side of the protocol: sends a stage's features upstream as a DDN1 request (QoS 1)
 * and waits for the reply with the same id on the device's reply topic, until the deadline.
 */
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { MqttClient } from "mqtt";
import { type ModelRef, modelKey, requestTopic } from "../topics.js";
import { decodeResult, encodeFrame, type ResultHeader } from "../wire/frame.js";
import { encodeTensor, type TensorEncoding } from "../wire/tensor.js";

export type OffloadFailure = "deadline" | "broker_unreachable" | "upstream_error";

export class OffloadError extends Error {
  constructor(
    readonly reason: OffloadFailure,
    message: string,
    readonly upstreamCode?: string,
  ) {
    super(message);
    this.name = "OffloadError";
  }
}

export interface OffloadReply {
  readonly header: Extract<ResultHeader, { status: "ok" }>;
  /** Bytes of the request frame sent. */
  readonly bytesSent: number;
  /** Publish to reply, milliseconds. */
  readonly roundTripMs: number;
}

export interface OffloadClientOptions {
  readonly client: MqttClient;
  readonly model: ModelRef;
  readonly digest: string;
  readonly replyTo: string;
  readonly encoding: TensorEncoding;
  /** Prefix of request ids (the device id); a random suffix makes them unique across restarts. */
  readonly idPrefix: string;
}

interface Waiting {
  resolve(r: OffloadReply): void;
  reject(e: OffloadError): void;
  timer: NodeJS.Timeout;
  sent: number;
  bytes: number;
}

/**
 * The header fields of a view request (docs/protocol.md "View requests"): the capture, the view's
 * index and its stage 0 exit logits (float32 values written as JSON numbers come back the same).
 */
export interface ViewFields {
  readonly capture: string;
  readonly view: number;
  readonly logits: readonly number[];
}

/** What a device's request frames carry besides the features: where they go and who asks. */
export type RequestTarget = Pick<OffloadClientOptions, "model" | "digest" | "replyTo" | "encoding">;

/**
 * The DDN1 request frame a device publishes for `features` (what OffloadClient.offload sends):
 * the tensor encoded with the target's encoding, then the header and the prefix, in one buffer.
 */
export function encodeRequestFrame(
  target: RequestTarget,
  stage: number,
  id: string,
  features: Float32Array,
  dims: readonly number[],
  extra: { deadline: number; sentAt: number; probe?: true } & Partial<ViewFields>,
): Buffer {
  const { fields, body } = encodeTensor(features, dims, target.encoding);
  const frame = encodeFrame(
    {
      kind: "infer",
      id,
      model: modelKey(target.model),
      digest: target.digest,
      stage,
      replyTo: target.replyTo,
      deadline: extra.deadline,
      sentAt: extra.sentAt,
      ...(extra.probe ? { probe: true } : {}),
      ...(extra.capture === undefined
        ? {}
        : { capture: extra.capture, view: extra.view, logits: extra.logits }),
      ...fields,
    },
    body,
  );
  // The frame's own bytes, not a copy: mqtt.js only reads them.
  return Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength);
}

export class OffloadClient {
  private readonly waiting = new Map<string, Waiting>();
  private readonly session = randomBytes(4).toString("hex");
  private counter = 0;
  /** Replies that arrived for no waiting request (late after a deadline, or duplicates). */
  lateReplies = 0;
  /** True once the reply topic is subscribed on the current connection: only then can answers arrive. */
  subscribed = false;

  constructor(private readonly o: OffloadClientOptions) {
    o.client.on("message", (topic, payload) => {
      if (topic === o.replyTo) this.onReply(payload);
    });
  }

  /** Subscribes to the reply topic now if connected and again on every (re)connection. */
  start(onError: (err: unknown) => void = () => {}): void {
    const { client } = this.o;
    const subscribe = () => {
      client.subscribeAsync(this.o.replyTo, { qos: 1 }).then(() => {
        this.subscribed = true;
      }, onError);
    };
    client.on("connect", subscribe);
    client.on("close", () => {
      this.subscribed = false;
    });
    if (client.connected) subscribe();
  }

  get pending(): number {
    return this.waiting.size;
  }

  /**
   * Sends features for stage `stage` (by index and name) and resolves with the upstream answer.
   * `probe` tags the request as a measurement of a sample the device already answered (header
   * field `probe`, docs/protocol.md).
   */
  offload(
    stage: { index: number; name: string },
    features: Float32Array,
    dims: readonly number[],
    deadline: number,
    options: { probe?: boolean } = {},
  ): Promise<OffloadReply> {
    return this.request(requestTopic(this.o.model, stage.name), stage.index, features, dims, {
      deadline,
      ...(options.probe ? { probe: true } : {}),
    });
  }

  /**
   * Publishes one request frame for stage index `stage` on `topic` and waits for its reply until
   * the deadline; `extra` adds the probe tag or a view request's fields to the header.
   */
  protected request(
    topic: string,
    stage: number,
    features: Float32Array,
    dims: readonly number[],
    extra: { deadline: number; probe?: true } & Partial<ViewFields>,
  ): Promise<OffloadReply> {
    const { deadline } = extra;
    if (!this.o.client.connected || !this.subscribed) {
      return Promise.reject(
        new OffloadError("broker_unreachable", "not connected to the MQTT broker"),
      );
    }
    const id = `${this.o.idPrefix}-${this.session}-${++this.counter}`;
    const sentAt = Date.now();
    const frame = encodeRequestFrame(this.o, stage, id, features, dims, { ...extra, sentAt });
    return new Promise<OffloadReply>((resolve, reject) => {
      const timer = setTimeout(
        () => {
          this.waiting.delete(id);
          reject(
            new OffloadError("deadline", `no answer within the deadline (${deadline - sentAt} ms)`),
          );
        },
        Math.max(0, deadline - Date.now()),
      );
      this.waiting.set(id, {
        resolve,
        reject,
        timer,
        sent: performance.now(),
        bytes: frame.length,
      });
      this.o.client.publish(topic, frame, { qos: 1 }, (err) => {
        if (err && this.waiting.has(id)) {
          clearTimeout(timer);
          this.waiting.delete(id);
          reject(new OffloadError("broker_unreachable", `publish failed: ${err.message}`));
        }
      });
    });
  }

  /** Fails every waiting request now (the broker went away and the deadline would only add delay). */
  failAll(reason: OffloadFailure, message: string): void {
    for (const [id, w] of this.waiting) {
      clearTimeout(w.timer);
      this.waiting.delete(id);
      w.reject(new OffloadError(reason, message));
    }
  }

  private onReply(payload: Buffer): void {
    let header: ResultHeader;
    try {
      header = decodeResult(
        new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength),
      ).header;
    } catch {
      this.lateReplies++;
      return;
    }
    const w = this.waiting.get(header.id);
    if (!w) {
      this.lateReplies++;
      return;
    }
    clearTimeout(w.timer);
    this.waiting.delete(header.id);
    if (header.status === "error") {
      w.reject(
        new OffloadError(
          "upstream_error",
          `${header.error.code}: ${header.error.message}`,
          header.error.code,
        ),
      );
    } else {
      w.resolve({ header, bytesSent: w.bytes, roundTripMs: performance.now() - w.sent });
    }
  }
}
