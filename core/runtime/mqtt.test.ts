import { once } from "node:events";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { coalesceWrites, safeBrokerUrl } from "./mqtt.js";

/** A loopback TCP server that records every chunk it reads. */
async function listener(): Promise<{
  server: Server;
  port: number;
  chunks: Buffer[];
  peer: Promise<Socket>;
}> {
  const chunks: Buffer[] = [];
  let accept: (s: Socket) => void = () => {};
  const peer = new Promise<Socket>((r) => {
    accept = r;
  });
  const server = createServer((s) => {
    s.on("data", (c: Buffer) => chunks.push(c));
    accept(s);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const a = server.address();
  return { server, port: typeof a === "object" && a ? a.port : 0, chunks, peer };
}

const settle = () => new Promise((r) => setTimeout(r, 50));

describe("coalesceWrites", () => {
  const servers: Server[] = [];
  const sockets: Socket[] = [];
  afterEach(async () => {
    for (const s of sockets.splice(0)) s.destroy();
    for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
  });

  async function pair(coalesce: boolean) {
    const l = await listener();
    servers.push(l.server);
    const raw = createConnection({ host: "127.0.0.1", port: l.port, noDelay: true });
    const socket = coalesce ? coalesceWrites(raw) : raw;
    sockets.push(socket);
    await once(socket, "connect");
    sockets.push(await l.peer);
    return { socket, chunks: l.chunks };
  }

  it("holds the writes of one event-loop turn and sends them together at its end, in order", async () => {
    const { socket, chunks } = await pair(true);
    for (let i = 0; i < 20; i++) socket.write(Buffer.from(`packet-${i};`));
    // Still in this turn: nothing has left, all 20 writes wait in one corked buffer.
    expect(socket.writableCorked).toBe(1);
    expect(socket.writableLength).toBe(
      Array.from({ length: 20 }, (_, i) => `packet-${i};`).join("").length,
    );
    await new Promise((r) => setImmediate(r));
    expect(socket.writableCorked).toBe(0);
    expect(socket.writableLength).toBe(0);
    await settle();
    expect(Buffer.concat(chunks).toString()).toBe(
      Array.from({ length: 20 }, (_, i) => `packet-${i};`).join(""),
    );
  });

  it("holds nothing past the turn: a later write goes out on its own", async () => {
    const { socket, chunks } = await pair(true);
    socket.write("first");
    await settle();
    expect(Buffer.concat(chunks).toString()).toBe("first");
    socket.write("second");
    await settle();
    expect(Buffer.concat(chunks).toString()).toBe("firstsecond");
    expect(chunks).toHaveLength(2);
  });

  it("keeps write callbacks and tolerates a socket destroyed while writes are held", async () => {
    const { socket } = await pair(true);
    const written = new Promise<void>((resolve, reject) =>
      socket.write("x", (err) => (err ? reject(err) : resolve())),
    );
    await written;
    const held = new Promise<Error | null | undefined>((resolve) =>
      socket.write("held", (err) => resolve(err)),
    );
    socket.destroy();
    // The held write fails cleanly (no hang, no throw from the deferred uncork).
    expect(((await held) as NodeJS.ErrnoException).code).toBe("ERR_STREAM_DESTROYED");
    await settle();
    expect(socket.destroyed).toBe(true);
  });

  it("without it, a write leaves at once (what the cork changes)", async () => {
    const { socket } = await pair(false);
    socket.write("now");
    expect(socket.writableCorked).toBe(0);
    expect(socket.writableLength).toBe(0);
  });
});

describe("safeBrokerUrl", () => {
  it("never shows a user name or password", () => {
    expect(safeBrokerUrl("mqtt://dev:s3cret@broker:1883")).toBe("mqtt://***:***@broker:1883");
    expect(safeBrokerUrl("mqtts://broker:8883")).toBe("mqtts://broker:8883");
    expect(safeBrokerUrl("not a url")).toBe("(invalid URL)");
  });
});
