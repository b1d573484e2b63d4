/** The tests' Mosquitto is the benchmarks' one (bench/support/mosquitto.ts). */
export {
  type Broker as Mosquitto,
  freePort,
  mosquittoBinary,
  startMosquitto,
} from "../../bench/support/mosquitto.js";
