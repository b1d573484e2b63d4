/** A bare mqtt.js client (MQTT 3.1.1, TCP_NODELAY on its socket, no reconnect): the baseline transport. */
import { createConnection } from "node:net";
import { MqttClient } from "mqtt";

export function plainClient(url: string, clientId: string): MqttClient {
  const u = new URL(url);
  const host = u.hostname;
  const port = Number(u.port || 1883);
  const client = new MqttClient(
    () => {
      const socket = createConnection({ host, port });
      socket.setNoDelay(true);
      return socket;
    },
    { protocolVersion: 4, clientId, clean: true, keepalive: 30, reconnectPeriod: 0 },
  );
  client.on("error", () => {});
  return client;
}

export function connected(client: MqttClient, timeoutMs = 10_000): Promise<void> {
  if (client.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("no MQTT connection")), timeoutMs);
    client.once("connect", () => {
      clearTimeout(t);
      resolve();
    });
  });
}
