/**
 * The upstream side of the protocol (server and gateway tiers): takes DDN1 requests for the first
 * stage of its range from MQTT, runs them on the worker pool, and either answers the request's
 * replyTo or forwards the features to the next stage's topic, keeping id, replyTo and deadline so
 * the final answer goes straight to the device. Handlers never throw: every readable request gets
 * a reply, unreadable frames are dropped and counted.
 *
 * A client is the request's reply topic (one per device, and with broker auth the only topic its
 * identity may read): it may have `maxInFlightPerClient` requests in flight here, and the pool
 * takes one request of each client in turn, so a device that floods is answered `overloaded`
 * while the others keep their place and their latency.
 */
import { performance } from "node:perf_hooks";
import type { MqttClient } from "mqtt";
import type { Logger } from "pino";
import type { VerifiedBundle } from "../bundle/read.js";
import type { TierMetrics } from "../metrics.js";
import { isForward } from "../pipeline.js";
import { type ModelRef, modelKey, requestTopic, sharedRequestFilter } from "../topics.js";
import {
  decodeRequest,
  type ErrorCode,
  encodeFrame,
  errorCodes,
  FrameError,
  isTopicName,
  type RequestHeader,
} from "../wire/frame.js";
import { decodeTensor, encodeTensor, type TensorEncoding } from "../wire/tensor.js";
import { overloadReasons, PoolError, type WorkerPool } from "./worker-pool.js";

/** What the service needs of a worker pool: submitting one sample. */
export type StagePool = Pick<WorkerPool, "submit">;

export interface StageServiceOptions {
  readonly client: MqttClient;
  readonly bundle: VerifiedBundle;
  readonly model: ModelRef;
  readonly pool: StagePool;
  /** First and last stage index this tier runs. */
  readonly from: number;
  readonly to: number;
  /** Per-sample input shape of stage `from` (no batch dimension); -1 where the model leaves it open. */
  readonly sampleShape: readonly number[];
  /** Tier name written into reply timings ("server", "edge"). */
  readonly tier: string;
  /** Encoding of features forwarded to stage `to + 1`. */
  readonly forward: TensorEncoding;
  readonly sharedSubscription: boolean;
  /** Refuse frames larger than this many bytes. */
  readonly maxFrameBytes: number;
  /** Requests one client (reply topic) may have in flight here; more are `overloaded`. 0 or absent: no limit. */
  readonly maxInFlightPerClient?: number;
  readonly metrics: TierMetrics;
  readonly log: Logger;
}

export class StageService {
  private readonly inFlight = new Set<Promise<void>>();
  /** Frames read from MQTT and not handled yet, in order of arrival (from `next`). */
  private arrived: { payload: Buffer; resolve(handled: Promise<void>): void }[] = [];
  private next = 0;
  private slicing = false;
  /**
   * Handles what arrived for up to SLICE_MS, then lets the event loop run: a burst of thousands of
   * frames (a device flooding, read in one go after the process was starved of CPU) would
   * otherwise hold back the workers' finished batches, and with them every device's answers.
   */
  private readonly slice = () => {
    const until = performance.now() + SLICE_MS;
    while (this.next < this.arrived.length) {
      const { payload, resolve } = this.arrived[this.next]!;
      this.arrived[this.next++] = undefined as never;
      resolve(this.handle(payload));
      if (performance.now() >= until) break;
    }
    if (this.next < this.arrived.length) {
      setImmediate(this.slice);
      return;
    }
    this.arrived = [];
    this.next = 0;
    this.slicing = false;
  };
  /** Accepted, unanswered requests by client (reply topic); a client leaves it at zero. */
  private readonly perClient = new Map<string, number>();
  /** Made once: a flood is refused thousands of times a second, and an Error's stack costs. */
  private readonly atClientLimit: PoolError;
  private readonly topic: string;
  private readonly filter: string;
  private readonly stageName: string;
  private readonly maxElements: number;
  private stopped = false;
  /** True once the broker confirmed the subscription on the current connection. */
  subscribed = false;

  constructor(private readonly o: StageServiceOptions) {
    const stage = o.bundle.manifest.stages[o.from];
    if (!stage) throw new RangeError(`bundle has no stage ${o.from}`);
    this.stageName = stage.name;
    this.topic = requestTopic(o.model, stage.name);
    this.filter = o.sharedSubscription ? sharedRequestFilter(o.model, stage.name) : this.topic;
    const known = o.sampleShape.every((d) => d > 0)
      ? o.sampleShape.reduce((a, b) => a * b, 1)
      : Number.POSITIVE_INFINITY;
    this.maxElements = Math.min(known, o.maxFrameBytes);
    this.atClientLimit = new PoolError(
      "overloaded",
      `this client already has ${o.maxInFlightPerClient ?? 0} requests in flight, the per-client limit (max-in-flight-per-client)`,
      "client_limit",
    );
    o.metrics.watchRequestsInFlight(() => this.inFlight.size);
    // Series that exist from the start: rate() and increase() miss the first event of a series
    // that appears with it (an error, or the first exit of a stage).
    for (let s = o.from; s <= o.to; s++)
      o.metrics.exits.inc({ stage: o.bundle.manifest.stages[s]?.name ?? String(s) }, 0);
    for (const code of errorCodes) o.metrics.errors.inc({ stage: this.stageName, code }, 0);
    for (const reason of overloadReasons)
      o.metrics.refusals.inc({ stage: this.stageName, reason }, 0);
  }

  /** The subscription filter this service listens on. */
  get subscription(): string {
    return this.filter;
  }

  /** Starts listening; subscribes now if connected and again on every (re)connection. */
  start(): void {
    const { client, log } = this.o;
    client.on("message", (topic, payload) => {
      if (topic !== this.topic || this.stopped) return;
      let handled: Promise<void>;
      if (this.slicing) {
        handled = new Promise<void>((resolve) => {
          this.arrived.push({ payload, resolve });
        });
      } else {
        // The first request of a read is handled now, so a lone request waits for no later
        // turn (its reply can even leave with the PUBACK); the rest of the read, a burst,
        // goes to the slices.
        this.slicing = true;
        setImmediate(this.slice);
        handled = this.handle(payload);
      }
      const task = handled.finally(() => this.inFlight.delete(task));
      this.inFlight.add(task);
    });
    const subscribe = () => {
      if (this.stopped) return;
      client.subscribeAsync(this.filter, { qos: 1 }).then(
        () => {
          this.subscribed = true;
          log.info({ subscription: this.filter }, "listening for requests");
        },
        (err: unknown) =>
          log.warn(
            { err, subscription: this.filter },
            "subscribe failed; retrying on the next connection",
          ),
      );
    };
    client.on("connect", subscribe);
    client.on("close", () => {
      this.subscribed = false;
    });
    if (client.connected) subscribe();
  }

  /**
   * Stops taking requests and waits until every accepted one is answered, or until the broker
   * connection is gone: then the answers cannot be published and waiting would never end.
   */
  async drain(): Promise<void> {
    const { client } = this.o;
    // Keep handling what arrives until the broker confirms the unsubscribe: those messages are
    // already acknowledged, so no other worker of the shared group would get them.
    // Without a connection there is nothing to unsubscribe from (and waiting would last until a reconnect).
    if (client.connected) await client.unsubscribeAsync(this.filter).catch(() => {});
    this.stopped = true;
    let onClose = () => {};
    const gone = new Promise<void>((resolve) => {
      onClose = () => resolve();
      client.once("close", onClose);
      if (!client.connected) resolve();
    });
    await Promise.race([Promise.allSettled([...this.inFlight]), gone]);
    client.off("close", onClose);
  }

  get pending(): number {
    return this.inFlight.size;
  }

  /** Counts a request against its client's limit; false when the client is at its limit. */
  private admit(client: string): boolean {
    const held = this.perClient.get(client) ?? 0;
    const limit = this.o.maxInFlightPerClient ?? 0;
    if (limit > 0 && held >= limit) return false;
    this.perClient.set(client, held + 1);
    return true;
  }

  private release(client: string): void {
    const held = this.perClient.get(client) ?? 0;
    if (held <= 1) this.perClient.delete(client);
    else this.perClient.set(client, held - 1);
  }

  private async handle(payload: Buffer): Promise<void> {
    const started = performance.now();
    const { metrics } = this.o;
    let header: RequestHeader | undefined;
    let admitted: string | undefined;
    try {
      if (payload.length > this.o.maxFrameBytes) {
        throw new FrameError(
          "bad_frame",
          `frame of ${payload.length} bytes exceeds the limit of ${this.o.maxFrameBytes}`,
          ...readableIds(payload),
        );
      }
      const frame = new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
      const decoded = decodeRequest(frame);
      header = decoded.header;
      if (header.sentAt !== undefined)
        metrics.transitSeconds.observe(
          { stage: this.stageName },
          Math.max(0, Date.now() - header.sentAt) / 1000,
        );
      this.check(header);
      // Before the body is decoded: refusing a flood costs the header's parse only.
      if (!this.admit(header.replyTo)) throw this.atClientLimit;
      admitted = header.replyTo;
      const data = decodeTensor(header, decoded.body, this.maxElements);
      const { result, queueMs } = await this.o.pool.submit({
        from: this.o.from,
        to: this.o.to,
        data,
        dims: header.shape,
        ...(header.deadline !== undefined ? { deadline: header.deadline } : {}),
        // A probe measures every exit: run to the end of this range without exiting early.
        ...(header.probe === true ? { ignoreExits: true } : {}),
        client: header.replyTo,
      });
      // Along a probe, every exit's answer so far travels on, and comes back in the reply.
      const exits =
        header.probe === true ? [...(header.exits ?? []), ...(result.exits ?? [])] : undefined;
      metrics.queueSeconds.observe({ stage: this.stageName }, queueMs / 1000);
      let compute = 0;
      for (let s = this.o.from; s <= result.stage; s++) {
        const ms = result.stageMs[s] ?? 0;
        compute += ms;
        metrics.stageSeconds.observe(
          { stage: this.o.bundle.manifest.stages[s]?.name ?? String(s) },
          ms / 1000,
        );
      }
      const timings = {
        ...header.timings,
        [this.o.tier]: round(compute),
        [`${this.o.tier}Queue`]: round(queueMs),
      };
      const stageName = this.o.bundle.manifest.stages[result.stage]?.name ?? String(result.stage);
      if (isForward(result)) {
        const next = this.o.bundle.manifest.stages[this.o.to + 1];
        if (!next) throw new PoolError("internal", "a sample was handed on past the last stage");
        const { fields, body } = encodeTensor(
          result.forward.features,
          result.forward.dims,
          this.o.forward,
        );
        const { scale: _s, zero: _z, ...rest } = header;
        await this.o.client.publishAsync(
          requestTopic(this.o.model, next.name),
          Buffer.from(
            encodeFrame(
              { ...rest, ...fields, stage: this.o.to + 1, timings, ...(exits ? { exits } : {}) },
              body,
            ),
          ),
          { qos: 1 },
        );
        metrics.requests.inc({ stage: stageName, outcome: header.probe ? "probe" : "forwarded" });
      } else {
        await this.reply(header.replyTo, {
          kind: "result",
          id: header.id,
          status: "ok",
          stage: result.stage,
          label: result.label,
          entropy: result.entropy,
          tier: this.o.tier,
          timings,
          ...(exits ? { exits } : {}),
        });
        // A probe measures a sample the device already answered: it is not an answer of the run.
        if (!header.probe) metrics.exits.inc({ stage: stageName });
        metrics.requests.inc({ stage: stageName, outcome: header.probe ? "probe" : "ok" });
      }
      metrics.requestSeconds.observe((performance.now() - started) / 1000);
    } catch (err) {
      await this.fail(err, header);
    } finally {
      if (admitted !== undefined) this.release(admitted);
    }
  }

  private check(h: RequestHeader): void {
    const fail = (code: ErrorCode, message: string) => {
      throw new FrameError(code, message, h.id, h.replyTo);
    };
    if (h.model !== modelKey(this.o.model))
      fail("unknown_model", `this worker serves model ${modelKey(this.o.model)}, not ${h.model}`);
    if (h.digest !== this.o.bundle.digest) {
      fail(
        "digest_mismatch",
        `request was made for bundle ${h.digest.slice(0, 12)}, this worker runs ${this.o.bundle.digest.slice(0, 12)}`,
      );
    }
    if (h.stage !== this.o.from)
      fail(
        "bad_frame",
        `this topic takes stage ${this.o.from} (${this.stageName}), the header says stage ${h.stage}`,
      );
    const [batch, ...rest] = h.shape;
    const want = this.o.sampleShape;
    const fits =
      batch === 1 &&
      rest.length === want.length &&
      rest.every((d, i) => want[i]! < 0 || d === want[i]);
    if (!fits)
      fail(
        "bad_frame",
        `shape [${h.shape.join(", ")}] does not fit stage ${this.stageName}'s input [1, ${want.join(", ")}]`,
      );
    if (h.deadline !== undefined && h.deadline <= Date.now())
      fail("deadline_exceeded", "deadline passed before the request arrived");
  }

  private async fail(err: unknown, header: RequestHeader | undefined): Promise<void> {
    const { metrics, log } = this.o;
    let code: ErrorCode = "internal";
    let message = err instanceof Error ? err.message : String(err);
    let id = header?.id;
    let replyTo = header?.replyTo;
    if (err instanceof FrameError) {
      code = err.code;
      id ??= err.id;
      replyTo ??= err.replyTo;
    } else if (err instanceof PoolError) {
      code = err.code;
      if (err.reason) metrics.refusals.inc({ stage: this.stageName, reason: err.reason });
    } else {
      log.error({ err }, "request failed");
      message = `internal error: ${message}`;
    }
    metrics.requests.inc({ stage: this.stageName, outcome: code });
    metrics.errors.inc({ stage: this.stageName, code });
    if (id === undefined || replyTo === undefined) {
      metrics.framesDropped.inc({ reason: code });
      log.warn({ code, message }, "dropped a frame without id or replyTo");
      return;
    }
    await this.reply(replyTo, {
      kind: "result",
      id,
      status: "error",
      error: { code, message },
    }).catch((e: unknown) => log.warn({ err: e }, "could not publish an error reply"));
  }

  private async reply(topic: string, header: object): Promise<void> {
    await this.o.client.publishAsync(topic, Buffer.from(encodeFrame(header)), { qos: 1 });
  }
}

/** Longest run of request handling before the event loop gets a turn, ms. */
const SLICE_MS = 4;

/** Best effort: id and replyTo from a frame too large to process, so the sender still hears back. */
function readableIds(payload: Buffer): [string?, string?] {
  try {
    if (payload.length < 8 || payload.toString("ascii", 0, 4) !== "DDN1") return [];
    const h = payload.readUInt32LE(4);
    if (h > 65536 || 8 + h > payload.length) return [];
    const header = JSON.parse(payload.toString("utf8", 8, 8 + h)) as Record<string, unknown>;
    return typeof header.id === "string" &&
      typeof header.replyTo === "string" &&
      isTopicName(header.replyTo)
      ? [header.id, header.replyTo]
      : [];
  } catch {
    return [];
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
