/** Shared output helpers for the benchmarks: fixed-precision numbers and the goal lines. */
export function ms(x: number, digits = 3): string {
  return Number.isFinite(x) ? x.toFixed(digits) : "-";
}

export function ratio(x: number): string {
  return Number.isFinite(x) ? `${x.toFixed(2)}x` : "-";
}

export interface Goal {
  readonly name: string;
  readonly met: boolean;
  readonly detail: string;
}

/** Prints one line per goal; returns the process exit code (1 when any goal is not met). */
export function printGoals(goals: readonly Goal[]): number {
  for (const g of goals) console.log(`goal ${g.name}: ${g.met ? "met" : "NOT met"} (${g.detail})`);
  return goals.every((g) => g.met) ? 0 : 1;
}

export function round(x: number, digits = 4): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
