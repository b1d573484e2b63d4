/** A container's environment as the kubelet gives it, from a Pod spec's `env`. */
import type { V1EnvVar } from "@kubernetes/client-node";

/**
 * Each variable's value: `value` with `$(NAME)` of a variable defined before it expanded (an
 * unknown reference stays as it is, as the kubelet leaves it), else `valueFrom` as `resolve` gives
 * it. `expanded` names the variables some later value referred to.
 */
export function containerEnv(
  vars: readonly V1EnvVar[],
  resolve: (e: V1EnvVar) => string,
): { env: Record<string, string>; expanded: Set<string> } {
  const env: Record<string, string> = {};
  const expanded = new Set<string>();
  for (const e of vars)
    env[e.name] =
      e.value === undefined
        ? resolve(e)
        : e.value.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (ref, n: string) => {
            if (!(n in env)) return ref;
            expanded.add(n);
            return env[n]!;
          });
  return { env, expanded };
}
