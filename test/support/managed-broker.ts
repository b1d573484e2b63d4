/**
 * A managed broker as the operator builds it, run on this machine: the broker Pod's ConfigMap and
 * Secrets written out as the kubelet mounts them (only the mount paths and the port moved to a
 * temporary directory), and its container's own command (the reload loop) run by sh.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import type { V1ConfigMap, V1Deployment, V1Secret } from "@kubernetes/client-node";
import { expect } from "vitest";
import { BROKER_RELOAD_SECONDS, MQTTS_PORT } from "../../operator/builders.js";
import { mosquittoBinary } from "./mosquitto.js";
import { stopProcess } from "./stop-process.js";
import type { TestPki } from "./tls.js";

export const decoded = (s: V1Secret) =>
  Object.fromEntries(
    Object.entries(s.data ?? {}).map(([k, v]) => [k, Buffer.from(v, "base64").toString("utf8")]),
  );

/** The broker Pod of `objects`, its volumes laid out under `dir`, run as its container runs. */
export class ManagedBroker {
  private child: ChildProcess | undefined;
  stderr = "";
  constructor(
    readonly dir: string,
    readonly port: number,
    /** The DDNNModel's name: its objects are `<model>-broker...`. */
    readonly model = "demo",
  ) {}

  /**
   * Writes what the broker Pod mounts: its ConfigMap, its auth Secret, the TLS Secret (from `pki`,
   * or without it the certificate the operator issued, Secret demo-broker-cert).
   */
  mount(objects: readonly { kind?: string; metadata?: { name?: string } }[], pki?: TestPki) {
    const named = <T>(kind: string, suffix: string) =>
      objects.find((o) => o.kind === kind && o.metadata?.name === `${this.model}${suffix}`) as T;
    const cm = named<V1ConfigMap>("ConfigMap", "-broker");
    const auth = decoded(named<V1Secret>("Secret", "-broker-auth"));
    const write = (path: string, text: string) => {
      mkdirSync(join(this.dir, path, ".."), { recursive: true, mode: 0o755 });
      writeFileSync(join(this.dir, path), text, { mode: 0o644 });
      chmodSync(join(this.dir, path), 0o644);
    };
    write("config/mosquitto.conf", this.local(cm.data!["mosquitto.conf"]!));
    write("auth/passwd", auth.passwd!);
    write("auth/acl", auth.acl!);
    const issued = pki ? undefined : decoded(named<V1Secret>("Secret", "-broker-cert"));
    write("tls/tls.crt", issued ? issued["tls.crt"]! : readFileSync(pki!.certFile, "utf8"));
    write("tls/tls.key", issued ? issued["tls.key"]! : readFileSync(pki!.keyFile, "utf8"));
    const deployment = named<V1Deployment>("Deployment", "-broker");
    return deployment.spec!.template.spec!.containers[0]!.args!;
  }

  /** Rewrites the auth Secret's files, as the kubelet does when the Secret changes. */
  remount(objects: readonly { kind?: string; metadata?: { name?: string } }[]): void {
    const auth = decoded(
      objects.find(
        (o) => o.kind === "Secret" && o.metadata?.name === `${this.model}-broker-auth`,
      ) as V1Secret,
    );
    writeFileSync(join(this.dir, "auth/passwd"), auth.passwd!);
    writeFileSync(join(this.dir, "auth/acl"), auth.acl!);
  }

  /** Rewrites the TLS Secret's files, as cert-manager's renewal and the kubelet do. */
  remountTls(pki: TestPki): void {
    writeFileSync(join(this.dir, "tls/tls.crt"), readFileSync(pki.certFile, "utf8"));
    writeFileSync(join(this.dir, "tls/tls.key"), readFileSync(pki.keyFile, "utf8"));
  }

  /** Mosquitto's process id: the script's child. */
  get pid(): string {
    return execFileSync("pgrep", ["-P", String(this.child!.pid), "-f", "mosquitto"], {
      encoding: "utf8",
    }).trim();
  }

  /** The Pod's paths and port, moved here. */
  local(text: string): string {
    return text
      .replaceAll("/mosquitto/", `${this.dir}/`)
      .replace(`listener ${MQTTS_PORT}`, `listener ${this.port} 127.0.0.1`);
  }

  async start(args: readonly string[]): Promise<void> {
    expect(args.slice(0, 2)).toEqual(["sh", "-c"]);
    // The container's script with the binary's path and a shorter reload period.
    const script = this.local(args[2]!)
      .replace(/^mosquitto /, `${mosquittoBinary} `)
      .replace(`sleep ${BROKER_RELOAD_SECONDS}`, "sleep 0.5");
    this.child = spawn("sh", ["-c", script], { stdio: ["ignore", "pipe", "pipe"] });
    this.child.stderr!.on("data", (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-8000);
    });
    this.child.stdout!.on("data", (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-8000);
    });
    const until = Date.now() + 10_000;
    for (;;) {
      const up = await new Promise<boolean>((resolve) => {
        const s = connect(this.port, "127.0.0.1");
        s.once("connect", () => {
          s.destroy();
          resolve(true);
        });
        s.once("error", () => resolve(false));
      });
      if (up) return;
      if (Date.now() > until) throw new Error(`broker did not listen: ${this.stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  stop(): Promise<void> {
    return stopProcess(this.child);
  }
}
