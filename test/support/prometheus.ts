/**
 * A real Prometheus (Debian's `prometheus` package) on a free loopback port, with a temporary
 * configuration and storage directory, scraping the given targets every second and evaluating
 * the given rule groups every second; and the parts of its HTTP API the tests read.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { freePort } from "./mosquitto.js";
import { requireProgram } from "./programs.js";
import { stopProcess } from "./stop-process.js";

/** A scrape target: host:port of a /metrics endpoint and the target labels it gets. */
export interface ScrapeTarget {
  readonly address: string;
  readonly labels: Readonly<Record<string, string>>;
}

export interface Sample {
  readonly metric: Record<string, string>;
  /** The value as Prometheus writes it ("NaN", "+Inf" included). */
  readonly value: string;
}

export interface Alert {
  readonly labels: Record<string, string>;
  readonly state: "pending" | "firing" | "inactive";
}

interface TargetState {
  readonly labels: Record<string, string>;
  readonly health: string;
  readonly lastScrape: string;
  readonly lastError: string;
}

export class Prometheus {
  private constructor(
    readonly url: string,
    /** How many targets it scrapes. */
    private readonly expected: number,
    private readonly child: ChildProcess,
    private readonly dir: string,
    private readonly stderr: () => string,
  ) {}

  static async start(
    targets: readonly ScrapeTarget[],
    ruleGroups: readonly unknown[] = [],
  ): Promise<Prometheus> {
    const binary = requireProgram("prometheus");
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), "ddnn-prometheus-"));
    writeFileSync(join(dir, "rules.yaml"), stringify({ groups: ruleGroups }));
    writeFileSync(
      join(dir, "prometheus.yaml"),
      stringify({
        global: { scrape_interval: "1s", scrape_timeout: "900ms", evaluation_interval: "1s" },
        rule_files: [join(dir, "rules.yaml")],
        scrape_configs: [
          {
            job_name: "ddnn-tiers",
            static_configs: targets.map((t) => ({ targets: [t.address], labels: t.labels })),
          },
        ],
      }),
    );
    const child = spawn(
      binary,
      [
        `--config.file=${join(dir, "prometheus.yaml")}`,
        `--storage.tsdb.path=${join(dir, "data")}`,
        `--web.listen-address=127.0.0.1:${port}`,
        "--log.level=warn",
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-8000);
    });
    const prometheus = new Prometheus(
      `http://127.0.0.1:${port}`,
      targets.length,
      child,
      dir,
      () => stderr,
    );
    // /-/ready answers 200 once the storage is open and the configuration and rules are loaded.
    const until = Date.now() + 30_000;
    for (;;) {
      const ready = await fetch(`${prometheus.url}/-/ready`).then(
        (r) => r.ok,
        () => false,
      );
      if (ready) return prometheus;
      if (child.exitCode !== null || Date.now() > until) {
        await prometheus.stop();
        throw new Error(
          `prometheus ${child.exitCode !== null ? `exited (${child.exitCode})` : "not ready in 30 s"}: ${stderr}`,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  private async api<T>(path: string, params: Record<string, string | string[]> = {}): Promise<T> {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params))
      for (const one of Array.isArray(v) ? v : [v]) query.append(k, one);
    const res = await fetch(`${this.url}/api/v1/${path}?${query}`);
    const body = (await res.json()) as { status: string; data: T; error?: string };
    if (body.status !== "success")
      throw new Error(`Prometheus ${path} ${JSON.stringify(params)}: ${body.error}`);
    return body.data;
  }

  /** An instant query at `time` (unix seconds; default now); throws with Prometheus's error. */
  async query(expr: string, time?: number): Promise<Sample[]> {
    const data = await this.api<{
      resultType: string;
      result: { metric: Record<string, string>; value: [number, string] }[] | [number, string];
    }>("query", { query: expr, ...(time !== undefined ? { time: String(time) } : {}) });
    if (data.resultType === "scalar")
      return [{ metric: {}, value: (data.result as [number, string])[1] }];
    return (data.result as { metric: Record<string, string>; value: [number, string] }[]).map(
      (r) => ({ metric: r.metric, value: r.value[1] }),
    );
  }

  /** Grafana's label_values(selector, label): the values of `label` on series matching `selector`. */
  labelValues(selector: string, label: string): Promise<string[]> {
    return this.api<string[]>(`label/${label}/values`, { "match[]": selector });
  }

  /** Alerts pending or firing now. */
  async alerts(): Promise<Alert[]> {
    return (await this.api<{ alerts: Alert[] }>("alerts")).alerts;
  }

  async targets(): Promise<TargetState[]> {
    return (await this.api<{ activeTargets: TargetState[] }>("targets")).activeTargets;
  }

  /**
   * Waits until every target has been scraped successfully at or after `since` (unix ms). Targets
   * show up some seconds after start: Prometheus hands discovered targets to its scrapers at most
   * every 5 s.
   */
  async scrapedSince(since: number, timeoutMs = 15_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const targets = await this.targets();
      const behind = targets.filter((t) => t.health !== "up" || Date.parse(t.lastScrape) < since);
      if (targets.length === this.expected && behind.length === 0) return;
      if (Date.now() > until)
        throw new Error(
          `${this.expected} targets not all scraped since ${new Date(since).toISOString()}: ${JSON.stringify(targets)}`,
        );
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async stop(): Promise<void> {
    await stopProcess(this.child);
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Prometheus's own log (warnings and errors), for failure messages. */
  get log(): string {
    return this.stderr();
  }
}
