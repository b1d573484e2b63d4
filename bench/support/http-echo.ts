/**
 * The bare HTTP echo, the baseline of bench/agent: a node:http server in its own process that
 * reads each POST body and answers with a JSON object of the agent's answer's shape and size, so
 * the agent rows and this one cross the same loopback HTTP exchange. Started by the benchmark
 * over IPC; sends {"port": N} when it listens; prints nothing.
 *
 *   node dist/bench/support/http-echo.js
 */
import { createServer } from "node:http";

const answer = JSON.stringify({
  label: 0,
  labelName: "T-shirt/top",
  stage: "device",
  tier: "device",
  entropy: 0.123456789,
  degraded: false,
  timings: { device: 0.123, comm: 0, upstream: 0, total: 0.234 },
});
const server = createServer((req, res) => {
  let bytes = 0;
  req.on("data", (d: Buffer) => {
    bytes += d.length;
  });
  req.on("end", () => {
    res.writeHead(bytes > 0 ? 200 : 400, { "content-type": "application/json" });
    res.end(answer);
  });
});
server.keepAliveTimeout = 60_000;
server.listen(0, "127.0.0.1", () => {
  const address = server.address();
  process.send?.({ port: typeof address === "object" && address ? address.port : 0 });
});
const stop = () => server.close(() => process.exit(0));
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
process.once("disconnect", stop);
