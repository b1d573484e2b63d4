/**
 * A device of a multi-view bundle sends its view's stage 0 output to the gateway that fuses the
 * views (docs/protocol.md "view requests"): one DDN1 frame with the exit logits in the header
 * (`logits`, with `capture` and `view`) and the features as the body, on the views topic; the
 * capture's answer comes back on the device's own views reply topic with the request's id.
 * Waiting, deadlines and reply checks are OffloadClient's.
 */
import {
  OffloadClient,
  type OffloadClientOptions,
  type OffloadReply,
} from "../core/runtime/offload-client.js";
import { viewsTopic } from "../core/topics.js";

export interface ViewClientOptions extends OffloadClientOptions {
  readonly view: number;
  /** Where the capture's answers come back (not the device's offload reply topic). */
  readonly replyTo: string;
}

/** One view of one capture: the device stage's exit logits and features. */
export interface ViewOutput {
  readonly capture: string;
  readonly logits: Float32Array;
  readonly features: Float32Array;
  readonly dims: readonly number[];
  readonly deadline: number;
}

export class ViewClient extends OffloadClient {
  constructor(private readonly v: ViewClientOptions) {
    super(v);
  }

  /** Sends one view of a capture and resolves with the capture's answer (fused by the gateway). */
  send(out: ViewOutput): Promise<OffloadReply> {
    // The features are stage 0's output: stage 1 runs next (after the aggregate's exit).
    return this.request(viewsTopic(this.v.model), 1, out.features, out.dims, {
      deadline: out.deadline,
      capture: out.capture,
      view: this.v.view,
      // Float32 values written as JSON numbers come back as the same float32 values.
      logits: Array.from(out.logits),
    });
  }
}
