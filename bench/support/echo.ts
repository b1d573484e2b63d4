/**
 * The bare MQTT echo, the baseline of bench/offload-rtt: a plain mqtt.js client (TCP_NODELAY) in
 * its own process that republishes every payload it receives on `--in` to `--out`, QoS 1 both
 * ways like the server's requests and replies. Started by the benchmark over IPC; prints nothing.
 *
 *   node dist/bench/support/echo.js --broker URL --in TOPIC --out TOPIC
 */
import { parseArgs } from "node:util";
import { connected, plainClient } from "./plain-mqtt.js";

const { values } = parseArgs({
  options: {
    broker: { type: "string" },
    in: { type: "string" },
    out: { type: "string" },
  },
});
if (!values.broker || !values.in || !values.out) {
  process.stderr.write("usage: echo.js --broker URL --in TOPIC --out TOPIC\n");
  process.exit(2);
}
const inTopic = values.in;
const outTopic = values.out;
const client = plainClient(values.broker, `bench-echo-${process.pid}`);
client.on("message", (topic, payload) => {
  if (topic === inTopic) client.publish(outTopic, payload, { qos: 1 });
});
await connected(client);
await client.subscribeAsync(inTopic, { qos: 1 });
process.send?.("ready");
const stop = () => {
  client.end(false, {}, () => process.exit(0));
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
process.once("disconnect", stop);
