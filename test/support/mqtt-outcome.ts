/** What a test sees when an MQTT client tries to connect once: "connected", or why not. */
import { connectAsync, type IClientOptions } from "mqtt";

export async function connectOutcome(url: string, options: IClientOptions = {}): Promise<string> {
  try {
    const c = await connectAsync(url, {
      protocolVersion: 4,
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      ...options,
    });
    await c.endAsync(true);
    return "connected";
  } catch (err) {
    return (err as Error).message;
  }
}
