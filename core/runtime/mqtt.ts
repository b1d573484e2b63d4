/**
 * MQTT connections for every tier: MQTT 3.1.1 (all the protocol needs), TCP_NODELAY on the socket
 * (Nagle costs ~40 ms per request/reply on loopback), and reconnect with exponential backoff.
 */
import * as net from "node:net";
import * as tls from "node:tls";
import { type IClientOptions, MqttClient } from "mqtt";
import { ConfigError } from "../config.js";

export interface BrokerOptions {
  readonly url: string;
  readonly clientId: string;
  readonly username?: string;
  readonly password?: string;
  /** false for workers (shared subscriptions need no session state); true keeps QoS 1 state across reconnects. */
  readonly clean?: boolean;
  readonly minReconnectMs?: number;
  readonly maxReconnectMs?: number;
  /** Messages the client keeps while offline; beyond that, publishes fail fast. */
  readonly connectTimeoutMs?: number;
  readonly will?: IClientOptions["will"];
  /** PEM certificates of the CAs that sign an mqtts:// broker's certificate (default: Node's bundled CAs). */
  readonly ca?: string;
  /** The name the broker's certificate must carry, when it is not the URL's host (SNI too). */
  readonly servername?: string;
}

function streamFor(
  url: URL,
  ca: string | undefined,
  servername: string | undefined,
): () => net.Socket {
  const port = Number(url.port || (url.protocol === "mqtts:" ? 8883 : 1883));
  const host = url.hostname.replace(/^\[|\]$/g, "");
  if (url.protocol === "mqtts:") {
    return () => {
      const socket = tls.connect({
        host,
        port,
        // Node checks the certificate against servername when there is one, else against host.
        servername: servername ?? (net.isIP(host) ? undefined : host),
        ...(ca !== undefined ? { ca } : {}),
      });
      socket.setNoDelay(true);
      return coalesceWrites(socket);
    };
  }
  if (url.protocol !== "mqtt:" && url.protocol !== "tcp:") {
    throw new ConfigError(
      `broker URL ${url.protocol}// is not supported (use mqtt:// or mqtts://)`,
    );
  }
  if (ca !== undefined) refuseCa(url.protocol);
  if (servername !== undefined) refuseTlsName(url.protocol);
  return () =>
    coalesceWrites(
      // writableHighWaterMark reaches the stream constructor; @types/node does not list it here.
      net.createConnection({
        host,
        port,
        noDelay: true,
        writableHighWaterMark: HELD_BYTES,
      } as net.NetConnectOpts),
    );
}

/**
 * Bytes one turn may hold before write() asks for backpressure (Node's default is 16 KiB): room
 * for the replies or forwarded f32 features of a whole micro-batch. Past it, mqtt.js waits for
 * 'drain', which comes after the turn's writes are released, so a read's remaining packets wait
 * one loop turn; nothing is lost. TLS sockets keep Node's default.
 */
const HELD_BYTES = 256 * 1024;

/**
 * Holds a socket's writes until the end of the current event-loop turn, so that everything one
 * turn sends leaves in one write: the PUBACKs for all the PUBLISH packets of one read, the
 * replies of one micro-batch. With TCP_NODELAY every write is otherwise its own segment and its
 * own system call, on this side and on the broker's. The delay is the rest of the turn (no
 * timer), so a lone reply still goes out at once.
 */
export function coalesceWrites<S extends net.Socket>(socket: S): S {
  const write = socket.write;
  let held = false;
  const release = () => {
    held = false;
    if (!socket.destroyed) socket.uncork();
  };
  socket.write = function (this: S, ...args: Parameters<S["write"]>) {
    if (!held) {
      held = true;
      socket.cork();
      setImmediate(release);
    }
    return (write as (...a: unknown[]) => boolean).apply(this, args);
  } as S["write"];
  return socket;
}

/** A CA only means something to a TLS connection; `scheme` is the broker URL's, e.g. "mqtt:". */
export function refuseCa(scheme: string): never {
  throw new ConfigError(`a broker CA only applies to mqtts:// brokers, not ${scheme}//`);
}

/** A certificate name only means something to a TLS connection, as a CA does. */
export function refuseTlsName(scheme: string): never {
  throw new ConfigError(`a broker TLS name only applies to mqtts:// brokers, not ${scheme}//`);
}

/** Connects (and keeps reconnecting) to a broker. Resolves once the client object exists, not when connected. */
export function connectBroker(options: BrokerOptions): MqttClient {
  const url = new URL(options.url);
  const min = options.minReconnectMs ?? 100;
  const max = options.maxReconnectMs ?? 5_000;
  const username =
    options.username ?? (url.username ? decodeURIComponent(url.username) : undefined);
  const password =
    options.password ?? (url.password ? decodeURIComponent(url.password) : undefined);
  const client = new MqttClient(streamFor(url, options.ca, options.servername), {
    protocolVersion: 4,
    clientId: options.clientId,
    clean: options.clean ?? true,
    keepalive: 15,
    reconnectPeriod: min,
    connectTimeout: options.connectTimeoutMs ?? 5_000,
    // Each service subscribes again on every connection itself (clean sessions keep nothing).
    resubscribe: false,
    // A refused login is retried with the same backoff: a new identity reaches the broker's
    // password file some seconds after its Pod starts (the kubelet updates the mounted Secret,
    // then the broker reloads it), and rotated credentials come the same way.
    reconnectOnConnackError: true,
    queueQoSZero: false,
    // Credentials from the configuration win; mqtt://user:pass@host is the fallback.
    ...(username ? { username } : {}),
    ...(password ? { password } : {}),
    ...(options.will ? { will: options.will } : {}),
  });
  // Exponential backoff between reconnect attempts, reset by a successful connection.
  client.on("connect", () => {
    client.options.reconnectPeriod = min;
  });
  client.on("close", () => {
    client.options.reconnectPeriod = Math.min(max, (client.options.reconnectPeriod ?? min) * 2);
  });
  // Errors surface as connection state; an unhandled 'error' event would kill the process.
  client.on("error", () => {});
  return client;
}

/** Waits for the first connection (or rejects after `timeoutMs`). */
export function whenConnected(client: MqttClient, timeoutMs = 10_000): Promise<void> {
  if (client.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off("connect", onConnect);
      reject(new Error(`no connection to the MQTT broker within ${timeoutMs} ms`));
    }, timeoutMs);
    const onConnect = () => {
      clearTimeout(timer);
      resolve();
    };
    client.once("connect", onConnect);
  });
}

/** Redacts credentials from a broker URL for logs. */
export function safeBrokerUrl(raw: string): string {
  try {
    const u = new URL(raw);
    if (u.password) u.password = "***";
    if (u.username) u.username = "***";
    return u.toString();
  } catch {
    return "(invalid URL)";
  }
}
