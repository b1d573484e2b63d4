/**
 * The HTTP side every tier shares: fastify with /healthz (the process is alive), /readyz (it can
 * serve: bundle loaded, workers up, broker connected) and /metrics (Prometheus text format).
 */
import Fastify, { type FastifyInstance, type FastifyPluginAsync } from "fastify";
import type { Registry } from "prom-client";

/** Empty when ready; otherwise what is missing, e.g. ["broker disconnected"]. */
export type Readiness = () => string[];

export const healthPlugin =
  (ready: Readiness): FastifyPluginAsync =>
  async (app) => {
    app.get("/healthz", async () => ({ status: "ok" }));
    app.get("/readyz", async (_req, reply) => {
      const missing = ready();
      if (missing.length > 0) return reply.code(503).send({ status: "not ready", missing });
      return { status: "ready" };
    });
  };

export const metricsPlugin =
  (registry: Registry): FastifyPluginAsync =>
  async (app) => {
    app.get("/metrics", async (_req, reply) => {
      reply.header("content-type", registry.contentType);
      return registry.metrics();
    });
  };

export function httpApp(bodyLimit = 8 * 1024 * 1024): FastifyInstance {
  return Fastify({ logger: false, bodyLimit, forceCloseConnections: "idle" });
}

/** Listens and returns the bound port (0 picks a free one). */
export async function listen(app: FastifyInstance, port: number, host: string): Promise<number> {
  await app.listen({ port, host });
  const address = app.server.address();
  return typeof address === "object" && address ? address.port : port;
}
