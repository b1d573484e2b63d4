/**
 * The long fuzz run: the same targets, seeds and property as test/fuzz.test.ts, for as long as
 * asked. Prints a table per target (inputs, inputs/s, accepted, distinct errors, slowest input)
 * and a JSON line; writes every finding to --out (default test/fixtures/fuzz/) as
 * <target>-<kind>-<seed>-<n>.bin, where the test replays it from then on. Exit code 1 on a finding.
 *
 *   npm run build && node dist/bench/fuzz.js --seconds 60 [--seed N] [--out DIR]
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { packageRoot } from "../cli/paths.js";
import { renderTable } from "../cli/table.js";
import {
  bundleSeeds,
  bundleTarget,
  FIXTURE_PREFIX,
  frameSeeds,
  frameTarget,
  fuzz,
  realFeatures,
  resultTarget,
  tensorTarget,
} from "./support/fuzz.js";

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      seconds: { type: "string", default: "60" },
      seed: { type: "string" },
      out: { type: "string", default: join(packageRoot(), "test", "fixtures", "fuzz") },
      target: { type: "string", multiple: true },
    },
  });
  const seconds = Number(values.seconds);
  if (!(seconds > 0)) throw new Error("--seconds must be a positive number");
  const seed =
    values.seed === undefined ? Math.floor(Math.random() * 2 ** 32) : Number(values.seed);
  const { features, dims } = await realFeatures(8);
  const frames = frameSeeds(features, dims);
  let targets = [
    frameTarget(frames),
    tensorTarget(frames),
    resultTarget(frames),
    bundleTarget(await bundleSeeds()),
  ];
  if (values.target)
    targets = targets.filter((t) => values.target!.some((w) => t.name.startsWith(w)));
  console.log(`fuzz: seed ${seed}, ${seconds} s over ${targets.length} targets`);
  const started = performance.now();
  const { stats, findings } = await fuzz(targets, {
    seed,
    msPerTarget: (seconds * 1000) / targets.length,
  });
  const wall = (performance.now() - started) / 1000;
  console.log(
    renderTable(
      [
        "target",
        "inputs",
        "inputs/s",
        "in target/s",
        "accepted",
        "distinct errors",
        "slowest ms",
        "findings",
      ],
      stats.map((s) => [
        s.target,
        String(s.inputs),
        ((s.inputs * targets.length) / wall).toFixed(0),
        ((s.inputs * 1000) / s.totalMs).toFixed(0),
        String(s.accepted),
        String(s.errors.size),
        s.maxMs.toFixed(1),
        String(findings.filter((f) => f.target === s.target).length),
      ]),
    ),
  );
  if (findings.length > 0) mkdirSync(values.out, { recursive: true });
  findings.forEach((f, n) => {
    const file = join(
      values.out,
      `${FIXTURE_PREFIX[f.target] ?? "unknown"}-${f.kind}-${seed}-${n}.bin`,
    );
    writeFileSync(file, f.input);
    console.log(`finding ${f.kind} in ${f.target}: ${f.detail.split("\n")[0]} -> ${file}`);
  });
  console.log(
    JSON.stringify({
      bench: "fuzz",
      seed,
      seconds: wall,
      targets: stats.map((s) => ({
        target: s.target,
        inputs: s.inputs,
        accepted: s.accepted,
        distinctErrors: s.errors.size,
        slowestMs: s.maxMs,
      })),
      findings: findings.map((f) => ({
        target: f.target,
        kind: f.kind,
        detail: f.detail.split("\n")[0],
      })),
    }),
  );
  return findings.length > 0 ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`fuzz: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 2;
  },
);
