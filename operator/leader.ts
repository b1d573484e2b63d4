import { defaultDelay } from "./informer.js";
import { type KubeClient, KubeError } from "./kube.js";

/**
 * Leader election on a coordination.k8s.io/v1 Lease, following client-go's leaderelection: a
 * candidate takes the lease when its holder has not renewed it for leaseDuration as seen on the
 * candidate's own clock (so clock skew between nodes does not matter), updates are guarded by
 * resourceVersion, the leader renews every retryPeriod and gives up when it could not renew for
 * renewDeadline, and a leader that stops cleanly releases the lease so the next one starts at once.
 */

export interface LeaderElectionOptions {
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  onStartedLeading: () => void;
  /** Called once when leadership is lost (not on a clean release). */
  onStoppedLeading: () => void;
  onError?: (err: unknown) => void;
}

interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

interface Lease {
  apiVersion: "coordination.k8s.io/v1";
  kind: "Lease";
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: LeaseSpec;
}

/** MicroTime as the API server writes it: RFC 3339 with microseconds. */
export function microTime(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");
}

/** What one tryAcquireOrRenew found: we hold the lease, another holder does, or it failed. */
type Attempt = "held" | "other" | "failed";

export class LeaderElector {
  private leading = false;
  /**
   * Bumped when the attempt in flight must no longer count: a renewal past the renew deadline, a
   * release. KubeClient requests cannot be cancelled, so a late answer still arrives; an attempt
   * that sees the epoch moved neither writes the Lease nor touches what we know of it.
   */
  private epoch = 0;
  private observed: { record: string; at: number } | undefined;
  private lease: Lease | undefined;
  /** When the lease held by another expires, by our clock (0 when unknown). */
  private expiresAt = 0;
  private readonly duration: number;
  private readonly renewDeadline: number;
  private readonly retry: number;

  constructor(
    private readonly client: KubeClient,
    private readonly options: LeaderElectionOptions,
  ) {
    this.duration = options.leaseDurationMs ?? 15_000;
    this.renewDeadline = options.renewDeadlineMs ?? 10_000;
    this.retry = options.retryPeriodMs ?? 2_000;
    if (!(this.duration > this.renewDeadline && this.renewDeadline > this.retry))
      throw new Error("leader election needs leaseDuration > renewDeadline > retryPeriod");
  }

  /** True from onStartedLeading until leadership is lost or released; never true again after. */
  isLeader(): boolean {
    return this.leading;
  }

  private resource() {
    return {
      apiVersion: "coordination.k8s.io/v1",
      plural: "leases",
      namespace: this.options.namespace,
      name: this.options.name,
    };
  }

  /** Campaigns, then leads until the signal aborts or the lease is lost. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      if ((await this.attempt()) === "held") break;
      // Poll every retryPeriod, but wake right when the holder's lease runs out.
      const untilExpiry = this.expiresAt - Date.now() + 5;
      const wait = this.retry * (1 + 0.2 * Math.random());
      await defaultDelay(untilExpiry > 0 ? Math.min(wait, untilExpiry) : wait, signal);
    }
    if (signal.aborted) return;
    this.leading = true;
    this.options.onStartedLeading();
    let lastRenew = Date.now();
    while (!signal.aborted && this.leading) {
      await defaultDelay(this.retry, signal);
      if (signal.aborted || !this.leading) break;
      // A renew that hangs must not outlive the renew deadline: by then another replica may lead.
      const budget = Math.max(0, this.renewDeadline - (Date.now() - lastRenew));
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        this.attempt(),
        new Promise<"timeout">((resolve) => {
          timer = setTimeout(() => resolve("timeout"), budget);
        }),
      ]);
      clearTimeout(timer);
      // Released while the attempt was in flight: a clean stop, not a loss.
      if (!this.leading) return;
      if (outcome === "held") {
        lastRenew = Date.now();
        continue;
      }
      if (
        outcome === "timeout" ||
        outcome === "other" ||
        Date.now() - lastRenew >= this.renewDeadline
      ) {
        this.epoch++;
        this.leading = false;
        this.options.onStoppedLeading();
        return;
      }
    }
  }

  /** Gives the lease up so another candidate can take it at once (best effort). */
  async release(): Promise<void> {
    if (!this.leading || !this.lease) return;
    this.leading = false;
    this.epoch++;
    const now = microTime(new Date());
    try {
      await this.client.replace(this.resource(), {
        ...this.lease,
        spec: {
          ...this.lease.spec,
          holderIdentity: "",
          leaseDurationSeconds: 1,
          renewTime: now,
          acquireTime: now,
        },
      });
    } catch (err) {
      this.options.onError?.(err);
    }
  }

  /** One tryAcquireOrRenew. Only run() decides from its outcome whether we lead. */
  private async attempt(): Promise<Attempt> {
    const epoch = this.epoch;
    const stale = () => epoch !== this.epoch;
    const me = this.options.identity;
    const now = new Date();
    const seconds = Math.max(1, Math.ceil(this.duration / 1000));
    try {
      let lease: Lease;
      try {
        lease = await this.client.get<Lease>(this.resource());
      } catch (err) {
        if (!(err instanceof KubeError && err.status === 404) || stale()) throw err;
        const created = await this.client.create<Lease>(
          { ...this.resource(), name: undefined },
          {
            apiVersion: "coordination.k8s.io/v1",
            kind: "Lease",
            metadata: { name: this.options.name, namespace: this.options.namespace },
            spec: {
              holderIdentity: me,
              leaseDurationSeconds: seconds,
              acquireTime: microTime(now),
              renewTime: microTime(now),
              leaseTransitions: 0,
            },
          },
        );
        if (stale()) return "failed";
        this.lease = created;
        this.observe(created.spec, now.getTime());
        return "held";
      }
      if (stale()) return "failed";
      const spec = lease.spec ?? {};
      this.observe(spec, now.getTime());
      const holder = spec.holderIdentity ?? "";
      const heldFor = (spec.leaseDurationSeconds ?? seconds) * 1000;
      if (holder !== "" && holder !== me && this.observed!.at + heldFor > now.getTime()) {
        this.expiresAt = this.observed!.at + heldFor;
        return "other";
      }
      const renewing = holder === me;
      const next: LeaseSpec = {
        holderIdentity: me,
        leaseDurationSeconds: seconds,
        acquireTime: renewing && spec.acquireTime ? spec.acquireTime : microTime(now),
        renewTime: microTime(now),
        leaseTransitions: (spec.leaseTransitions ?? 0) + (renewing ? 0 : 1),
      };
      const written = await this.client.replace<Lease>(this.resource(), { ...lease, spec: next });
      if (stale()) return "failed";
      this.lease = written;
      this.observe(written.spec, now.getTime());
      return "held";
    } catch (err) {
      // A 409 means another candidate wrote first; anything else is reported and retried. An
      // abandoned attempt's failure is nobody's concern any more.
      if (!stale() && !(err instanceof KubeError && err.status === 409))
        this.options.onError?.(err);
      return "failed";
    }
  }

  private observe(spec: LeaseSpec, at: number): void {
    const record = `${spec.holderIdentity ?? ""}|${spec.renewTime ?? ""}|${spec.leaseDurationSeconds ?? ""}`;
    if (this.observed?.record !== record) this.observed = { record, at };
  }
}
