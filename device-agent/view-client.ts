/**
 * A device of a multi-view bundle sends its view's stage 0 output to the gateway that fuses the
 * views (docs/protocol.md "view requests"): one DDN1 frame with the exit logits in the header
 * (`logits`, with `capture` and `view`) and the features as the body, on the views topic; the
 * capture's answer comes back on the device's own views reply topic with the request's id.
 */
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { MqttClient } from "mqtt";
import { OffloadError, type OffloadReply } from "../core/runtime/offload-client.js";
import { type ModelRef, modelKey, viewsTopic } from "../core/topics.js";
import { decodeResult, encodeFrame, type ResultHeader } from "../core/wire/frame.js";
import { encodeTensor, type TensorEncoding } from "../core/wire/tensor.js";

export interface ViewClientOptions {
  readonly client: MqttClient;
  readonly model: ModelRef;
  readonly digest: string;
  readonly view: number;
  /** Where the capture's answers come back (not the device's offload reply topic). */
  readonly replyTo: string;
  readonly encoding: TensorEncoding;
  /** Prefix of request ids (the device id). */
  readonly idPrefix: string;
}

/** One view of one capture: the device stage's exit logits and features. */
export interface ViewOutput {
  readonly capture: string;
  readonly logits: Float32Array;
  readonly features: Float32Array;
  readonly dims: readonly number[];
  readonly deadline: number;
}

interface Waiting {
  resolve(r: OffloadReply): void;
  reject(e: OffloadError): void;
  timer: NodeJS.Timeout;
  sent: number;
  bytes: number;
}

export class ViewClient {
  private readonly waiting = new Map<string, Waiting>();
  private readonly session = randomBytes(4).toString("hex");
  private counter = 0;
  /** Answers that came for no waiting request (after the deadline, or twice). */
  lateReplies = 0;
  subscribed = false;

  constructor(private readonly o: ViewClientOptions) {
    o.client.on("message", (topic, payload) => {
      if (topic === o.replyTo) this.onReply(payload);
    });
  }

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

  /** Sends one view of a capture and resolves with the capture's answer (fused by the gateway). */
  send(out: ViewOutput): Promise<OffloadReply> {
    if (!this.o.client.connected || !this.subscribed)
      return Promise.reject(
        new OffloadError("broker_unreachable", "not connected to the MQTT broker"),
      );
    const id = `${this.o.idPrefix}-${this.session}-${++this.counter}`;
    const { fields, body } = encodeTensor(out.features, out.dims, this.o.encoding);
    const sentAt = Date.now();
    const frame = encodeFrame(
      {
        kind: "infer",
        id,
        model: modelKey(this.o.model),
        digest: this.o.digest,
        // The features are stage 0's output: stage 1 runs next (after the aggregate's exit).
        stage: 1,
        replyTo: this.o.replyTo,
        deadline: out.deadline,
        sentAt,
        capture: out.capture,
        view: this.o.view,
        // Float32 values written as JSON numbers come back as the same float32 values.
        logits: Array.from(out.logits),
        ...fields,
      },
      body,
    );
    return new Promise<OffloadReply>((resolve, reject) => {
      const timer = setTimeout(
        () => {
          this.waiting.delete(id);
          reject(
            new OffloadError(
              "deadline",
              `no answer within the deadline (${out.deadline - sentAt} ms)`,
            ),
          );
        },
        Math.max(0, out.deadline - Date.now()),
      );
      this.waiting.set(id, {
        resolve,
        reject,
        timer,
        sent: performance.now(),
        bytes: frame.length,
      });
      this.o.client.publish(viewsTopic(this.o.model), Buffer.from(frame), { qos: 1 }, (err) => {
        if (err && this.waiting.has(id)) {
          clearTimeout(timer);
          this.waiting.delete(id);
          reject(new OffloadError("broker_unreachable", `publish failed: ${err.message}`));
        }
      });
    });
  }

  failAll(reason: "broker_unreachable", message: string): void {
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
    if (header.status === "error")
      w.reject(
        new OffloadError(
          "upstream_error",
          `${header.error.code}: ${header.error.message}`,
          header.error.code,
        ),
      );
    else w.resolve({ header, bytesSent: w.bytes, roundTripMs: performance.now() - w.sent });
  }
}
