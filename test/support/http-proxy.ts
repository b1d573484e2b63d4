/**
 * A tiny forwarding HTTP proxy on 127.0.0.1, as a cluster's egress proxy would be: absolute-form
 * GETs are forwarded to their origin, CONNECT opens a tunnel. It records what went through it.
 */
import {
  createServer,
  type IncomingMessage,
  request,
  type Server,
  type ServerResponse,
} from "node:http";
import { createServer as createTlsServer } from "node:https";
import { type AddressInfo, connect, type Socket } from "node:net";

export interface ForwardProxy {
  readonly url: string;
  /** "GET <absolute URL>" and "CONNECT <host:port>" lines, in order. */
  readonly seen: string[];
  /** Proxy-Authorization headers received, in order. */
  readonly auth: (string | undefined)[];
  close(): Promise<void>;
}

export interface ForwardProxyOptions {
  /** "user:password" the proxy demands (407 otherwise). */
  credentials?: string;
  /** Serve the proxy itself over TLS (an https:// proxy). */
  tls?: { key: Buffer; cert: Buffer };
}

export async function startForwardProxy(options: ForwardProxyOptions = {}): Promise<ForwardProxy> {
  const seen: string[] = [];
  const auth: (string | undefined)[] = [];
  const sockets = new Set<Socket>();
  const allowed = (req: IncomingMessage) => {
    auth.push(req.headers["proxy-authorization"]);
    return (
      options.credentials === undefined ||
      req.headers["proxy-authorization"] ===
        `Basic ${Buffer.from(options.credentials).toString("base64")}`
    );
  };
  const server: Server = options.tls ? createTlsServer(options.tls) : createServer();
  server.on("request", (req: IncomingMessage, res: ServerResponse) => {
    seen.push(`${req.method} ${req.url}`);
    if (!allowed(req)) {
      res.writeHead(407, { "Proxy-Authenticate": "Basic" }).end();
      return;
    }
    let target: URL;
    try {
      target = new URL(req.url ?? "");
    } catch {
      res.writeHead(400).end("absolute URL expected");
      return;
    }
    const headers = { ...req.headers, via: "1.1 test-proxy" };
    delete headers["proxy-authorization"];
    const upstream = request(
      {
        host: target.hostname,
        port: target.port,
        path: target.pathname + target.search,
        headers,
      },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      },
    );
    upstream.on("error", () => res.writeHead(502).end("bad gateway"));
    res.on("close", () => upstream.destroy());
    upstream.end();
  });
  server.on("connect", (req, client: Socket, head: Buffer) => {
    seen.push(`CONNECT ${req.url}`);
    if (!allowed(req)) {
      client.end("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n");
      return;
    }
    const [host, port] = (req.url ?? "").split(":");
    const upstream = connect(Number(port), host, () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    const drop = () => {
      upstream.destroy();
      client.destroy();
    };
    upstream.on("error", drop);
    client.on("error", drop);
  });
  server.on(options.tls ? "secureConnection" : "connection", (s: Socket) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `${options.tls ? "https" : "http"}://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    auth,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}
