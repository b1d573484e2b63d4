/**
 * The local aggregator of a multi-view bundle (docs/bundle-views.md, docs/protocol.md "view
 * requests"): every device sends its view's exit logits and features in one frame, tagged with a
 * capture id and its view index. The gateway groups the frames of one capture for at most the
 * fusion window; when every view came or the window closes it aggregates the logits and answers
 * every device of the capture when the aggregate is confident, and otherwise aggregates the
 * features and forwards ONE request to the next stage, whose answer it fans out to every device.
 * A view that comes after its capture was fused gets the capture's answer. Handlers never throw.
 */
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { MqttClient } from "mqtt";
import type { Logger } from "pino";
import type { VerifiedBundle } from "../core/bundle/read.js";
import { argmax, type ExitPolicy, normalizedEntropy } from "../core/exit.js";
import type { FusionMetrics, TierMetrics } from "../core/metrics.js";
import { eventsTopic, type ModelRef, modelKey, requestTopic, viewsTopic } from "../core/topics.js";
import { aggregateFeatures, aggregateLogits, type ViewsLayout, viewsOf } from "../core/views.js";
import {
  decodeRequest,
  decodeResult,
  type ErrorCode,
  type ExitAnswer,
  encodeFrame,
  FrameError,
  isTopicName,
  type RequestHeader,
  type ResultHeader,
} from "../core/wire/frame.js";
import { decodeTensor, encodeTensor, type TensorEncoding } from "../core/wire/tensor.js";

export interface FusionOptions {
  readonly client: MqttClient;
  readonly bundle: VerifiedBundle;
  readonly model: ModelRef;
  readonly policy: ExitPolicy;
  /** How long the gateway waits for the rest of a capture's views after its first, ms. */
  readonly windowMs: number;
  /** Answers kept for views that come after their capture was answered. */
  readonly recentCaptures: number;
  /** Encoding of the aggregated features forwarded to stage 1. */
  readonly forward: TensorEncoding;
  readonly maxFrameBytes: number;
  /** Where the next stage's answers to the forwarded requests come back. */
  readonly replyTo: string;
  /** Label indices whose answer publishes one alarm event per capture. */
  readonly alarms: ReadonlySet<number>;
  readonly metrics: TierMetrics;
  readonly fusion: FusionMetrics;
  readonly log: Logger;
}

/** A device waiting for its capture's answer: the request id and reply topic it sent. */
interface Member {
  readonly id: string;
  readonly replyTo: string;
  readonly view: number;
}

/** The answer of a capture, without the request id (each device gets its own). */
type CaptureAnswer =
  | {
      kind: "result";
      status: "ok";
      stage: number;
      label: number;
      entropy: number;
      timings: Record<string, number>;
      exits?: ExitAnswer[];
      /** The views fused, in view order. */
      views: number[];
      [extra: string]: unknown;
    }
  | {
      kind: "result";
      status: "error";
      error: { code: ErrorCode; message: string };
      [extra: string]: unknown;
    };

interface Capture {
  readonly key: string;
  readonly capture: string;
  readonly members: Member[];
  readonly logits: (Float32Array | undefined)[];
  readonly features: (Float32Array | undefined)[];
  shape: readonly number[];
  deadline: number | undefined;
  timings: Record<string, number>;
  readonly firstAt: number;
  timer: NodeJS.Timeout | undefined;
  /** Set once fused: the views aggregated (the members that come later are late views). */
  fused?: number[];
  /** The local aggregate's answer of a forwarded capture (the reply's first exit). */
  exit0?: ExitAnswer;
}

export class FusionService {
  private readonly open = new Map<string, Capture>();
  /** Forwarded captures by the id of the request sent to the next stage. */
  private readonly forwarded = new Map<string, { capture: Capture; timer: NodeJS.Timeout }>();
  /** Recently answered captures (insertion order: the oldest is dropped first). */
  private readonly answered = new Map<string, CaptureAnswer>();
  private readonly inFlight = new Set<Promise<void>>();
  private readonly layout: ViewsLayout;
  private readonly topic: string;
  private readonly classes: number;
  private readonly session = randomBytes(4).toString("hex");
  private counter = 0;
  private stopped = false;
  /** True once the broker confirmed both subscriptions on the current connection. */
  subscribed = false;

  constructor(private readonly o: FusionOptions) {
    this.layout = viewsOf(o.bundle.manifest);
    this.topic = viewsTopic(o.model);
    this.classes = o.bundle.manifest.labels.length;
    if (o.bundle.manifest.stages.length > 1 && o.bundle.manifest.stages[0]?.exit === undefined)
      throw new RangeError("stage 0 of a multi-view bundle needs an exit threshold");
  }

  get subscription(): string {
    return this.topic;
  }

  /** Captures waiting for views or for the next stage's answer. */
  get pending(): number {
    return this.open.size + this.forwarded.size;
  }

  start(): void {
    const { client, log } = this.o;
    client.on("message", (topic, payload) => {
      if (this.stopped) return;
      if (topic === this.topic) this.track(this.handle(payload));
      else if (topic === this.o.replyTo) this.track(this.onNextStage(payload));
    });
    const subscribe = () => {
      if (this.stopped) return;
      // Plain subscriptions, never $share: every view of a capture must reach this gateway.
      client.subscribeAsync([this.topic, this.o.replyTo], { qos: 1 }).then(
        () => {
          this.subscribed = true;
          log.info({ subscription: this.topic }, "listening for view requests");
        },
        (err: unknown) => log.warn({ err }, "subscribe failed; retrying on the next connection"),
      );
    };
    client.on("connect", subscribe);
    client.on("close", () => {
      this.subscribed = false;
    });
    if (client.connected) subscribe();
  }

  /** Stops taking views, fuses what is open now and waits for the answers in flight. */
  async drain(): Promise<void> {
    const { client } = this.o;
    if (client.connected) await client.unsubscribeAsync(this.topic).catch(() => {});
    for (const c of [...this.open.values()]) this.track(this.fuse(c));
    const until = Date.now() + 5000;
    while ((this.forwarded.size > 0 || this.inFlight.size > 0) && Date.now() < until) {
      if (!client.connected) break;
      await Promise.race([
        Promise.allSettled([...this.inFlight]),
        new Promise((r) => setTimeout(r, 20)),
      ]);
    }
    this.stopped = true;
    for (const { timer } of this.forwarded.values()) clearTimeout(timer);
    this.forwarded.clear();
  }

  private track(task: Promise<void>): void {
    const t = task
      .catch((err: unknown) => this.o.log.error({ err }, "fusion step failed"))
      .finally(() => this.inFlight.delete(t));
    this.inFlight.add(t);
  }

  private async handle(payload: Buffer): Promise<void> {
    let header: RequestHeader | undefined;
    try {
      if (payload.length > this.o.maxFrameBytes)
        throw new FrameError(
          "bad_frame",
          `frame of ${payload.length} bytes exceeds the limit of ${this.o.maxFrameBytes}`,
        );
      const decoded = decodeRequest(
        new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength),
      );
      header = decoded.header;
      const view = this.check(header);
      const capture = header.capture as string;
      const logits = Float32Array.from(header.logits as number[]);
      const key = `${header.model}\u0000${capture}`;
      const member: Member = { id: header.id, replyTo: header.replyTo, view };
      const done = this.answered.get(key);
      if (done) {
        this.o.fusion.lateViews.inc();
        await this.answer([member], done);
        return;
      }
      let c = this.open.get(key);
      if (c?.fused) {
        // Fused and forwarded, the answer not back yet: this view gets it when it comes.
        this.o.fusion.lateViews.inc();
        c.members.push(member);
        return;
      }
      if (c && c.shape.join() !== header.shape.join())
        throw new FrameError(
          "bad_frame",
          `shape [${header.shape.join(", ")}] differs from the capture's other views [${c.shape.join(", ")}]`,
          header.id,
          header.replyTo,
        );
      const features = decodeTensor(header, decoded.body, this.o.maxFrameBytes);
      if (!c) {
        c = {
          key,
          capture,
          members: [],
          logits: new Array(this.layout.count).fill(undefined),
          features: new Array(this.layout.count).fill(undefined),
          shape: header.shape,
          deadline: header.deadline,
          timings: { ...header.timings },
          firstAt: performance.now(),
          timer: undefined,
        };
        this.open.set(key, c);
        const opened = c;
        const wait =
          header.deadline === undefined
            ? this.o.windowMs
            : Math.min(this.o.windowMs, Math.max(0, (header.deadline - Date.now()) / 2));
        c.timer = setTimeout(() => this.track(this.fuse(opened)), wait);
      }
      c.members.push(member);
      if (header.deadline !== undefined)
        c.deadline = Math.min(c.deadline ?? header.deadline, header.deadline);
      // A view sent twice (a retry) is answered, but aggregated once.
      if (c.logits[view] === undefined) {
        c.logits[view] = logits;
        c.features[view] = features;
      }
      if (c.logits.every((l) => l !== undefined)) await this.fuse(c);
    } catch (err) {
      await this.fail(err, header, payload);
    }
  }

  /** The view index of a valid view request; throws FrameError naming what is wrong. */
  private check(h: RequestHeader): number {
    const fail = (code: ErrorCode, message: string): never => {
      throw new FrameError(code, message, h.id, h.replyTo);
    };
    if (h.model !== modelKey(this.o.model))
      fail("unknown_model", `this gateway fuses model ${modelKey(this.o.model)}, not ${h.model}`);
    if (h.digest !== this.o.bundle.digest)
      fail(
        "digest_mismatch",
        `request was made for bundle ${h.digest.slice(0, 12)}, this gateway runs ${this.o.bundle.digest.slice(0, 12)}`,
      );
    if (h.capture === undefined || h.view === undefined || h.logits === undefined)
      fail("bad_frame", "a view request needs the header fields capture, view and logits");
    const view = h.view as number;
    if (view >= this.layout.count)
      fail(
        "bad_frame",
        `view ${view} is not a view of ${this.o.bundle.manifest.name} (views 0..${this.layout.count - 1})`,
      );
    if ((h.logits as number[]).length !== this.classes)
      fail(
        "bad_frame",
        `logits has ${(h.logits as number[]).length} values, the bundle has ${this.classes} labels`,
      );
    if (h.stage !== 1)
      fail("bad_frame", `a view request carries stage 0's output: stage must be 1, not ${h.stage}`);
    if (h.shape[0] !== 1) fail("bad_frame", `shape [${h.shape.join(", ")}]: one sample per view`);
    if (h.deadline !== undefined && h.deadline <= Date.now())
      fail("deadline_exceeded", "deadline passed before the view arrived");
    return view;
  }

  /** Aggregates the views that came: the local exit answers, or one request goes to stage 1. */
  private async fuse(c: Capture): Promise<void> {
    if (c.fused) return;
    clearTimeout(c.timer);
    const views = c.logits.flatMap((l, v) => (l ? [v] : []));
    c.fused = views;
    const { fusion, metrics, bundle } = this.o;
    fusion.capturesFused.inc({
      outcome: views.length === this.layout.count ? "complete" : "partial",
    });
    fusion.viewsPerCapture.observe(views.length);
    const started = performance.now();
    try {
      const logits = aggregateLogits(this.layout.localAggregation, c.logits);
      const entropy = normalizedEntropy(logits, 0, this.classes);
      const label = argmax(logits, 0, this.classes);
      const stages = bundle.manifest.stages;
      const next = stages[1];
      if (!next || this.o.policy.exits(0, entropy)) {
        fusion.aggregateExits.inc();
        metrics.exits.inc({ stage: stages[0]!.name });
        const ms = performance.now() - started;
        const timings = { ...c.timings, edge: round(ms), edgeQueue: round(started - c.firstAt) };
        metrics.requests.inc({ stage: stages[0]!.name, outcome: "ok" });
        await this.settle(c, {
          kind: "result",
          status: "ok",
          stage: 0,
          label,
          entropy,
          tier: "edge",
          timings,
          exits: [{ stage: 0, label, entropy }],
          capture: c.capture,
          views,
        });
        return;
      }
      const features = aggregateFeatures(this.layout.featureAggregation, c.features, 1);
      const [, channels, ...rest] = c.shape;
      const dims =
        this.layout.featureAggregation === "concat"
          ? [1, (channels ?? 0) * this.layout.count, ...rest]
          : [...c.shape];
      const { fields, body } = encodeTensor(features, dims, this.o.forward);
      const id = `fusion-${this.session}-${++this.counter}`;
      const ms = performance.now() - started;
      const deadline = c.deadline;
      const wait = deadline === undefined ? 60_000 : Math.max(0, deadline - Date.now());
      const timer = setTimeout(() => {
        if (!this.forwarded.delete(id)) return;
        this.track(
          this.settle(c, {
            kind: "result",
            status: "error",
            error: { code: "deadline_exceeded", message: `${next.name} did not answer in time` },
          }),
        );
      }, wait);
      c.exit0 = { stage: 0, label, entropy };
      this.forwarded.set(id, { capture: c, timer });
      await this.o.client.publishAsync(
        requestTopic(this.o.model, next.name),
        Buffer.from(
          encodeFrame(
            {
              kind: "infer",
              id,
              model: modelKey(this.o.model),
              digest: bundle.digest,
              stage: 1,
              replyTo: this.o.replyTo,
              ...(deadline !== undefined ? { deadline } : {}),
              sentAt: Date.now(),
              timings: { ...c.timings, edge: round(ms), edgeQueue: round(started - c.firstAt) },
              ...fields,
            },
            body,
          ),
        ),
        { qos: 1 },
      );
      metrics.requests.inc({ stage: stages[0]!.name, outcome: "forwarded" });
    } catch (err) {
      this.o.log.error({ err, capture: c.capture }, "fusing a capture failed");
      await this.settle(c, {
        kind: "result",
        status: "error",
        error: { code: "internal", message: `fusing capture failed: ${(err as Error).message}` },
      });
    }
  }

  /** The next stage's answer to a forwarded capture: fanned out to every device of the capture. */
  private async onNextStage(payload: Buffer): Promise<void> {
    let header: ResultHeader;
    try {
      header = decodeResult(
        new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength),
      ).header;
    } catch {
      this.o.metrics.framesDropped.inc({ reason: "bad_frame" });
      return;
    }
    const waiting = this.forwarded.get(header.id);
    if (!waiting) return;
    clearTimeout(waiting.timer);
    this.forwarded.delete(header.id);
    const c = waiting.capture;
    const { id: _id, ...rest } = header;
    if (rest.status === "error") {
      await this.settle(c, rest);
      return;
    }
    const exit0 = c.exit0;
    await this.settle(c, {
      ...rest,
      exits: [
        ...(exit0 ? [exit0] : []),
        ...(rest.exits ?? [{ stage: rest.stage, label: rest.label, entropy: rest.entropy }]),
      ],
      capture: c.capture,
      views: c.fused ?? [],
    });
  }

  /** Answers every device of a capture, remembers the answer, and publishes its one event. */
  private async settle(c: Capture, answer: CaptureAnswer): Promise<void> {
    this.open.delete(c.key);
    this.answered.set(c.key, answer);
    while (this.answered.size > this.o.recentCaptures) {
      const oldest = this.answered.keys().next().value as string;
      this.answered.delete(oldest);
    }
    if (answer.status === "ok" && this.o.alarms.has(answer.label) && this.o.client.connected) {
      const event = {
        kind: "alarm",
        capture: c.capture,
        views: answer.views,
        label: answer.label,
        labelName: this.o.bundle.manifest.labels[answer.label] ?? String(answer.label),
        stage: this.o.bundle.manifest.stages[answer.stage]?.name ?? String(answer.stage),
        entropy: answer.entropy,
        degraded: false,
        at: Date.now(),
      };
      this.o.client.publish(eventsTopic(this.o.model), JSON.stringify(event), { qos: 1 }, () => {});
    }
    await this.answer(c.members.splice(0), answer);
  }

  private async answer(members: readonly Member[], answer: CaptureAnswer): Promise<void> {
    await Promise.all(
      members.map((m) =>
        this.o.client
          .publishAsync(m.replyTo, Buffer.from(encodeFrame({ ...answer, id: m.id })), { qos: 1 })
          .catch((err: unknown) =>
            this.o.log.warn({ err }, "could not publish a capture's answer"),
          ),
      ),
    );
  }

  private async fail(
    err: unknown,
    header: RequestHeader | undefined,
    payload: Buffer,
  ): Promise<void> {
    const { metrics, log } = this.o;
    let code: ErrorCode = "internal";
    let message = err instanceof Error ? err.message : String(err);
    let id = header?.id;
    let replyTo = header?.replyTo;
    if (err instanceof FrameError) {
      code = err.code;
      id ??= err.id;
      replyTo ??= err.replyTo;
      if (id === undefined) [id, replyTo] = readableIds(payload);
    } else {
      log.error({ err }, "view request failed");
      message = `internal error: ${message}`;
    }
    const stage = this.o.bundle.manifest.stages[0]?.name ?? "0";
    metrics.requests.inc({ stage, outcome: code });
    metrics.errors.inc({ stage, code });
    if (id === undefined || replyTo === undefined) {
      metrics.framesDropped.inc({ reason: code });
      log.warn({ code, message }, "dropped a view frame without id or replyTo");
      return;
    }
    await this.o.client
      .publishAsync(
        replyTo,
        Buffer.from(encodeFrame({ kind: "result", id, status: "error", error: { code, message } })),
        {
          qos: 1,
        },
      )
      .catch((e: unknown) => log.warn({ err: e }, "could not publish an error reply"));
  }
}

/** Best effort: id and replyTo of a frame refused before its header was validated. */
function readableIds(payload: Buffer): [string?, string?] {
  try {
    if (payload.length < 8 || payload.toString("ascii", 0, 4) !== "DDN1") return [];
    const h = payload.readUInt32LE(4);
    if (h > 65536 || 8 + h > payload.length) return [];
    const header = JSON.parse(payload.toString("utf8", 8, 8 + h)) as Record<string, unknown>;
    return typeof header.id === "string" &&
      header.id.length > 0 &&
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
