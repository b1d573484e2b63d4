/**
 * A byte relay between two endpoints, `unix:PATH` or `tcp:HOST:PORT`: every connection accepted
 * on the first is piped to a new connection to the second. `ddnn profile --link` runs one in each
 * network namespace of the emulated link (a unix socket path is the same file in every
 * namespace, so it joins the profiler's namespace to the link's ends without any route).
 *
 * usage: node link-relay.js LISTEN CONNECT   (prints one line "ready" once it listens)
 */
import { connect, createServer, type Server, type Socket } from "node:net";
import { pathToFileURL } from "node:url";

export type Endpoint = { readonly unix: string } | { readonly host: string; readonly port: number };

export function parseEndpoint(s: string): Endpoint {
  if (s.startsWith("unix:")) return { unix: s.slice(5) };
  const m = /^tcp:(.+):(\d+)$/.exec(s);
  if (!m) throw new Error(`not an endpoint (unix:PATH or tcp:HOST:PORT): ${s}`);
  return { host: m[1]!, port: Number(m[2]) };
}

export function endpointText(e: Endpoint): string {
  return "unix" in e ? `unix:${e.unix}` : `tcp:${e.host}:${e.port}`;
}

function open(e: Endpoint): Socket {
  // No Nagle on either leg: MQTT's small frames would otherwise wait for the last one's ACK.
  return "unix" in e ? connect(e.unix) : connect({ host: e.host, port: e.port, noDelay: true });
}

/** Listens on `from` and pipes each connection to `to`; resolves once listening. */
export async function relay(
  from: Endpoint,
  to: Endpoint,
): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer({ noDelay: true }, (inbound) => {
    const outbound = open(to);
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.once("close", () => sockets.delete(s));
      // A reset on one leg ends the other: the client sees its connection fail as it would.
      s.on("error", () => {
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    if ("unix" in from) server.listen(from.unix, () => resolve());
    else server.listen(from.port, from.host, () => resolve());
  });
  const address = server.address();
  return {
    server,
    port: typeof address === "object" && address ? address.port : 0,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [listen, target] = process.argv.slice(2);
  if (!listen || !target) {
    process.stderr.write("usage: node link-relay.js LISTEN CONNECT\n");
    process.exit(2);
  }
  const r = await relay(parseEndpoint(listen), parseEndpoint(target));
  process.stdout.write("ready\n");
  const stop = () => {
    r.close().then(() => process.exit(0));
  };
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
}
