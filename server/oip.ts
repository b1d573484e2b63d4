/**
 * Open Inference Protocol v2 (KServe / Triton) over HTTP: the Server Only configuration, where the
 * device sends the whole input and every stage runs on the server.
 */
import type { FastifyPluginAsync } from "fastify";
import { z } from "zod";
import type { VerifiedBundle } from "../core/bundle/read.js";
import type { TierMetrics } from "../core/metrics.js";
import { isForward } from "../core/pipeline.js";
import { preprocess } from "../core/preprocess.js";
import { PoolError, type WorkerPool } from "../core/runtime/worker-pool.js";
import type { ModelRef } from "../core/topics.js";

export interface InferenceOptions {
  readonly bundle: VerifiedBundle;
  readonly model: ModelRef;
  readonly pool: WorkerPool;
  readonly metrics: TierMetrics;
  /** The workers opened every stage (--full-model); otherwise inference over HTTP is refused. */
  readonly fullModel: boolean;
}

const nested: z.ZodType<unknown[]> = z.lazy(() => z.array(z.union([z.number(), nested])));

const inferRequest = z.object({
  id: z.string().optional(),
  parameters: z.object({ early_exit: z.boolean().optional() }).loose().optional(),
  inputs: z
    .array(
      z.object({
        name: z.string(),
        shape: z.array(z.number().int().nonnegative()).min(1),
        datatype: z.enum(["UINT8", "FP32"]),
        data: nested,
      }),
    )
    .length(1, "must hold exactly one input tensor"),
});

/** One HTTP request may not take the whole queue from the MQTT devices. */
export const MAX_SAMPLES_PER_REQUEST = 256;

const status: Record<string, number> = { overloaded: 503, deadline_exceeded: 504, internal: 500 };

export const inferencePlugin =
  (o: InferenceOptions): FastifyPluginAsync =>
  async (app) => {
    const { manifest } = o.bundle;
    const names = new Set([o.model.name, manifest.name]);
    const inputShape = manifest.input.shape;
    const perSample = inputShape.reduce((a, b) => a * b, 1);
    const last = manifest.stages.length - 1;
    const inputName = manifest.stages[0]?.input ?? "input";

    const metadata = () => ({
      name: o.model.name,
      versions: [manifest.version],
      platform: "ddnn-bundle/v1",
      inputs: [
        { name: inputName, datatype: "UINT8", shape: [-1, ...inputShape] },
        { name: inputName, datatype: "FP32", shape: [-1, ...inputShape] },
      ],
      outputs: [
        { name: "label", datatype: "INT64", shape: [-1] },
        { name: "label_name", datatype: "BYTES", shape: [-1] },
        { name: "entropy", datatype: "FP64", shape: [-1] },
        { name: "stage", datatype: "INT64", shape: [-1] },
      ],
      parameters: { digest: o.bundle.digest, stages: manifest.stages.map((s) => s.name) },
    });

    app.get("/v2/health/live", async () => ({ live: true }));
    app.get("/v2/health/ready", async (_req, reply) => {
      const ready = o.pool.readyWorkers > 0;
      return reply.code(ready ? 200 : 503).send({ ready });
    });
    app.get<{ Params: { name: string } }>("/v2/models/:name", async (req, reply) => {
      if (!names.has(req.params.name))
        return reply.code(404).send({ error: `unknown model "${req.params.name}"` });
      return metadata();
    });
    app.get<{ Params: { name: string } }>("/v2/models/:name/ready", async (req, reply) => {
      if (!names.has(req.params.name))
        return reply.code(404).send({ error: `unknown model "${req.params.name}"` });
      return reply
        .code(o.pool.readyWorkers > 0 ? 200 : 503)
        .send({ name: o.model.name, ready: o.pool.readyWorkers > 0 });
    });

    app.post<{ Params: { name: string } }>("/v2/models/:name/infer", async (req, reply) => {
      if (!names.has(req.params.name))
        return reply.code(404).send({ error: `unknown model "${req.params.name}"` });
      if (!o.fullModel) {
        const own = o.pool.opened.map((i) => manifest.stages[i]?.name ?? String(i));
        return reply.code(501).send({
          error: `this server opened only the stages [${own.join(", ")}]; start it with --full-model true (DDNN_FULL_MODEL) to run the whole model over HTTP`,
        });
      }
      const parsed = inferRequest.safeParse(req.body);
      if (!parsed.success) {
        const issue = parsed.error.issues[0]!;
        return reply
          .code(400)
          .send({ error: `${issue.path.join(".") || "body"}: ${issue.message}` });
      }
      const input = parsed.data.inputs[0]!;
      const shape = input.shape.length === inputShape.length ? [1, ...input.shape] : input.shape;
      const n = shape[0] ?? 0;
      if (n > MAX_SAMPLES_PER_REQUEST) {
        return reply.code(413).send({
          error: `inputs[0].shape: ${n} samples in one request; send at most ${MAX_SAMPLES_PER_REQUEST}`,
        });
      }
      const fits =
        shape.length === inputShape.length + 1 &&
        shape.slice(1).every((d, i) => d === inputShape[i]);
      if (!fits || n < 1) {
        return reply.code(400).send({
          error: `inputs[0].shape [${input.shape.join(", ")}] must be [N, ${inputShape.join(", ")}]`,
        });
      }
      const flat = (input.data as unknown[]).flat(Number.POSITIVE_INFINITY) as number[];
      if (flat.length !== n * perSample) {
        return reply.code(400).send({
          error: `inputs[0].data holds ${flat.length} values; shape needs ${n * perSample}`,
        });
      }
      let x: Float32Array;
      if (input.datatype === "UINT8") {
        if (flat.some((v) => !Number.isInteger(v) || v < 0 || v > 255)) {
          return reply
            .code(400)
            .send({ error: "inputs[0].data: UINT8 values must be integers 0..255" });
        }
        x = preprocess(manifest.input, Uint8Array.from(flat), n);
      } else {
        x = Float32Array.from(flat);
      }
      const ignoreExits = parsed.data.parameters?.early_exit !== true;
      const started = performance.now();
      try {
        const answers = await Promise.all(
          Array.from({ length: n }, (_, i) =>
            o.pool.submit({
              from: 0,
              to: last,
              data: x.slice(i * perSample, (i + 1) * perSample),
              dims: [1, ...inputShape],
              ignoreExits,
              // One caller's samples take one place per turn in a batch, like one device's.
              client: `http ${req.ip}`,
            }),
          ),
        );
        const results = answers.map((a) => a.result);
        if (results.some(isForward))
          throw new PoolError("internal", "a sample did not reach an exit");
        const ok = results.filter((r) => !isForward(r));
        for (const r of ok)
          o.metrics.requests.inc({
            stage: manifest.stages[r.stage]?.name ?? String(r.stage),
            outcome: "ok_http",
          });
        const compute = answers.reduce(
          (sum, a) => sum + a.result.stageMs.reduce((x2, y) => x2 + y, 0),
          0,
        );
        return {
          model_name: o.model.name,
          model_version: manifest.version,
          ...(parsed.data.id !== undefined ? { id: parsed.data.id } : {}),
          parameters: {
            server_ms: Math.round(compute * 1000) / 1000,
            total_ms: Math.round((performance.now() - started) * 1000) / 1000,
          },
          outputs: [
            { name: "label", datatype: "INT64", shape: [n], data: ok.map((r) => r.label) },
            {
              name: "label_name",
              datatype: "BYTES",
              shape: [n],
              data: ok.map((r) => manifest.labels[r.label] ?? String(r.label)),
            },
            { name: "entropy", datatype: "FP64", shape: [n], data: ok.map((r) => r.entropy) },
            { name: "stage", datatype: "INT64", shape: [n], data: ok.map((r) => r.stage) },
          ],
        };
      } catch (err) {
        const code = err instanceof PoolError ? err.code : "internal";
        const stage = manifest.stages[0]?.name ?? "0";
        o.metrics.errors.inc({ stage, code });
        if (err instanceof PoolError && err.reason)
          o.metrics.refusals.inc({ stage, reason: err.reason });
        return reply
          .code(status[code] ?? 500)
          .send({ error: `${code}: ${(err as Error).message}` });
      }
    });
  };
