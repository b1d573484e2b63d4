/**
 * `ddnn bundle pack`: turns a verified bundle into what a cluster takes: a ConfigMap manifest
 * holding a reproducible .tar.gz (bundles under 1 MiB), or the .tar.gz itself to serve over
 * HTTP(S), plus the sha256 a DDNNModel pins.
 */
import { readdir, stat, writeFile } from "node:fs/promises";
import { join, relative, sep } from "node:path";
import { gzipSync } from "node:zlib";
import { stringify } from "yaml";
import { z } from "zod";
import { MANIFEST_FILE, type Manifest } from "../core/bundle/manifest.js";
import { readBundle, readBundleArchive, type VerifiedBundle } from "../core/bundle/read.js";
import {
  ConfigError,
  type ConfigOf,
  field,
  loadConfig,
  program,
  programHelp,
  wantsHelp,
} from "../core/config.js";
import { readViewsBundle, type VerifiedViewsBundle, viewsOf } from "../core/views.js";

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$/;
const fileName = z.string().min(1, "needs a file name").optional();

/** `ddnn bundle pack`: every argument, flag, environment variable, file key and default it has. */
export const packConfig = program({
  dir: field(
    z
      .string({ message: "name the bundle directory (ddnn bundle pack DIR)" })
      .min(1, "name the bundle directory (ddnn bundle pack DIR)"),
    {
      positional: true,
      env: "DDNN_BUNDLE",
      value: "DIR",
      help: "the bundle: a directory holding ddnn.json and its stage files, or a .tar.gz",
    },
  ),
  name: field(
    z
      .string()
      .max(253, "must be a ConfigMap name (at most 253 characters)")
      .regex(DNS_SUBDOMAIN, "must be a ConfigMap name (lowercase a-z, 0-9, - and ., at most 253)")
      .optional(),
    {
      env: "DDNN_BUNDLE_CONFIGMAP",
      help: "the ConfigMap's name",
      value: "NAME",
      defaultText: "<bundle name>-bundle",
    },
  ),
  namespace: field(
    z
      .string()
      .max(63, "must be a namespace name (at most 63 characters)")
      .regex(DNS_LABEL, "must be a namespace name (lowercase a-z, 0-9 and -, at most 63)")
      .optional(),
    {
      env: "DDNN_BUNDLE_NAMESPACE",
      help: "the ConfigMap's namespace, which must be the DDNNModel's; without it kubectl -n or kustomize's namespace decide",
      value: "NS",
      defaultText: "none",
    },
  ),
  out: field(fileName, {
    env: "DDNN_BUNDLE_OUT",
    help: "write the ConfigMap manifest to FILE instead of stdout",
    value: "FILE",
  }),
  archive: field(fileName, {
    env: "DDNN_BUNDLE_ARCHIVE",
    help: "also write the .tar.gz to FILE (required when it is over 1 MiB)",
    value: "FILE",
  }),
});

export const bundleHelp = programHelp(packConfig, {
  title: "ddnn bundle: prepare a model bundle for a cluster",
  usage: "ddnn bundle pack DIR [--name NAME] [--namespace NS] [--out FILE] [--archive FILE]",
  after: `pack verifies the bundle DIR (ddnn.json and the sha256 of every stage file; a .tar.gz works
too) and packs ddnn.json and the stage files it names (a multi-view bundle's view files too), nothing else, as a reproducible .tar.gz
(sorted names, owner 0:0, mtime 0, gzip without name or time: the same bundle always gives the
same bytes). When that is at most 1 MiB (the most a ConfigMap holds) it writes a ConfigMap
manifest with the archive under binaryData key bundle.tar.gz; larger bundles are served over
HTTP(S) and named by spec.bundle.url. On stderr it prints the sha256 of ddnn.json, which goes
in the DDNNModel's spec.bundle.sha256, and a DDNNModel that uses the bundle.

Apply the ConfigMap with "kubectl apply --server-side" (or kubectl create): a client-side
apply copies the object into an annotation, which holds at most 256 KiB.`,
});

/** The most the API server stores in one ConfigMap (data and binaryData together). */
export const CONFIGMAP_MAX_BYTES = 1024 * 1024;
/** The binaryData key of the ConfigMap, the default of the DDNNModel's spec.bundle.configMap.key. */
export const CONFIGMAP_KEY = "bundle.tar.gz";

export async function runBundle(
  argv: readonly string[],
  out: (text: string) => void,
  err: (text: string) => void = (text) => process.stderr.write(`${text}\n`),
): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case "pack":
      return runPack(rest, out, err);
    case undefined:
    case "help":
    case "--help":
    case "-h":
      out(bundleHelp);
      return sub === undefined ? 2 : 0;
    default:
      throw new ConfigError(`unknown bundle command "${sub}" (try: ddnn bundle --help)`);
  }
}

type PackFlags = ConfigOf<typeof packConfig>;

async function runPack(
  argv: readonly string[],
  out: (text: string) => void,
  err: (text: string) => void,
): Promise<number> {
  if (wantsHelp(argv)) {
    out(bundleHelp);
    return 0;
  }
  const flags = loadConfig(packConfig, argv);
  const bundle = await readBundle(flags.dir);
  // A multi-view bundle's other views' device stages are named by its views block: verified and
  // packed too, or the packed bundle would be refused by every tier that reads it.
  const views = viewsOf(bundle.manifest).count > 1 ? await readViewsBundle(flags.dir) : undefined;
  const files = bundleFiles(bundle, views);
  const archive = packReproducibly(files);
  const { manifest, digest } = bundle;
  // Read back as the operator and the tiers will, so a name tar cannot carry as the manifest
  // spells it (a leading ./, say) fails here rather than in the cluster.
  const reread = await readBundleArchive(archive, `${flags.dir} (packed)`);
  if (reread.digest !== digest) throw new Error("the packed archive reads back as another bundle");
  const name = flags.name ?? `${resourceName(manifest.name, 253 - "-bundle".length)}-bundle`;
  const fits = archive.length <= CONFIGMAP_MAX_BYTES;
  if (!fits && flags.archive === undefined) {
    throw new ConfigError(
      `${flags.dir}: packed to ${archive.length} bytes, over the ${CONFIGMAP_MAX_BYTES} bytes (1 MiB) a ConfigMap holds: write it with --archive FILE, serve it over HTTP(S) and name it in the DDNNModel's spec.bundle.url (sha256 ${digest})`,
    );
  }
  if (flags.archive !== undefined) await writeFile(flags.archive, archive);

  const report = [
    `packed ${manifest.name} ${manifest.version} from ${flags.dir}: ${files.map((f) => f.name).join(", ")} in ${archive.length} bytes of .tar.gz`,
  ];
  const leftOut = bundle.archive ? [] : await filesNotIn(flags.dir, files);
  if (leftOut.length > 0) {
    report.push(
      `left out (ddnn.json does not name them, so its sha256 would not pin them): ${leftOut.join(", ")}`,
    );
  }
  if (flags.archive !== undefined) report.push(`wrote ${flags.archive}`);
  if (fits) {
    const yaml = configMapManifest(bundle, archive, name, flags.namespace, argv);
    if (flags.out !== undefined) {
      await writeFile(flags.out, yaml);
      report.push(`wrote ConfigMap ${name} to ${flags.out}`);
    } else {
      out(yaml.replace(/\n$/, ""));
    }
    report.push(
      tooLargeForClientSideApply(archive)
        ? "apply it with kubectl apply --server-side (or kubectl create): a client-side apply keeps a copy of the object in an annotation, which holds at most 256 KiB"
        : "apply it with kubectl apply (--server-side works too)",
    );
  } else {
    report.push(
      `${archive.length} bytes is over the ${CONFIGMAP_MAX_BYTES} bytes (1 MiB) a ConfigMap holds: serve ${flags.archive} over HTTP(S) and name it in spec.bundle.url`,
    );
  }
  report.push(`spec.bundle.sha256: ${digest}`, "", "A DDNNModel for it:", "---");
  report.push(
    stringify(
      ddnnModelSnippet(manifest, digest, fits ? { configMap: name } : { url: true }, flags),
      { lineWidth: 0 },
    ).replace(/\n$/, ""),
  );
  err(report.join("\n"));
  return 0;
}

export interface ArchiveFile {
  /** Path inside the archive, `/`-separated. */
  readonly name: string;
  readonly bytes: Uint8Array;
}

/**
 * ddnn.json, the stage files and, for a multi-view bundle, every view's device stage file, with
 * the bytes that were verified (never read a second time).
 */
export function bundleFiles(bundle: VerifiedBundle, views?: VerifiedViewsBundle): ArchiveFile[] {
  const files = new Map<string, Uint8Array>([[MANIFEST_FILE, bundle.manifestBytes]]);
  bundle.manifest.stages.forEach((stage, i) => {
    files.set(stage.file, bundle.stageBytes[i]!);
  });
  views?.views.devices.forEach((device, v) => {
    files.set(device.file, views.deviceBytes[v]!);
  });
  return [...files].map(([name, bytes]) => ({ name, bytes }));
}

/** Files of a bundle directory the archive does not carry (a trainer checkpoint, notes). */
async function filesNotIn(dir: string, packed: readonly ArchiveFile[]): Promise<string[]> {
  const keep = new Set(packed.map((f) => f.name));
  const found: string[] = [];
  const walk = async (at: string): Promise<void> => {
    for (const entry of await readdir(at, { withFileTypes: true })) {
      const path = join(at, entry.name);
      if (entry.isDirectory()) await walk(path);
      else if ((await stat(path)).isFile()) {
        const name = relative(dir, path).split(sep).join("/");
        if (!keep.has(name)) found.push(name);
      }
    }
  };
  await walk(dir);
  return found.sort();
}

/**
 * A .tar.gz whose bytes depend only on the files: ustar entries in byte order of their names,
 * mode 0644, owner and group 0 without names, mtime 0, no directory entries; gzip level 9 with
 * no file name and mtime 0. (GNU tar's `--sort=name --owner=0 --group=0 --numeric-owner
 * --mtime=@0`, then `gzip -n -9`, in-process.)
 */
export function packReproducibly(files: readonly ArchiveFile[]): Uint8Array {
  const sorted = [...files].sort((a, b) =>
    Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)),
  );
  const blocks: Uint8Array[] = [];
  for (const file of sorted) {
    blocks.push(tarHeader(file.name, file.bytes.length));
    blocks.push(file.bytes);
    const pad = (512 - (file.bytes.length % 512)) % 512;
    if (pad > 0) blocks.push(new Uint8Array(pad));
  }
  // End of archive: two zero blocks, then zeros up to the 10 KiB record size, as tar writes.
  const body = blocks.reduce((n, b) => n + b.length, 0) + 1024;
  blocks.push(new Uint8Array(1024 + ((10240 - (body % 10240)) % 10240)));
  const gz = gzipSync(Buffer.concat(blocks), { level: 9 });
  // The header's OS byte names the platform zlib was built for; fix it to Unix (3), as gzip -n.
  gz[9] = 3;
  return new Uint8Array(gz.buffer, gz.byteOffset, gz.byteLength);
}

function tarHeader(path: string, size: number): Uint8Array {
  const h = new Uint8Array(512);
  const encoded = new TextEncoder().encode(path);
  let name = encoded;
  let prefix = new Uint8Array(0);
  if (encoded.length > 100) {
    // ustar splits a long path at a `/` into prefix (155 bytes) and name (100 bytes).
    const cut = [...encoded.keys()].find(
      (i) => encoded[i] === 0x2f && i <= 155 && encoded.length - i - 1 <= 100,
    );
    if (cut === undefined)
      throw new ConfigError(`${path}: the path is too long for a ustar archive (100 + 155 bytes)`);
    prefix = encoded.subarray(0, cut);
    name = encoded.subarray(cut + 1);
  }
  const octal = (value: number, width: number) =>
    new TextEncoder().encode(`${value.toString(8).padStart(width - 1, "0")}\0`);
  h.set(name, 0);
  h.set(octal(0o644, 8), 100);
  h.set(octal(0, 8), 108); // uid
  h.set(octal(0, 8), 116); // gid
  h.set(octal(size, 12), 124);
  h.set(octal(0, 12), 136); // mtime
  h.fill(0x20, 148, 156); // checksum counts as spaces while it is summed
  h[156] = 0x30; // regular file
  h.set(new TextEncoder().encode("ustar\u000000"), 257);
  h.set(prefix, 345);
  const sum = h.reduce((n, b) => n + b, 0);
  h.set(new TextEncoder().encode(`${sum.toString(8).padStart(6, "0")}\0 `), 148);
  return h;
}

/** A Kubernetes object name from a bundle name: lowercase, a-z 0-9 and -, starting with a letter. */
function resourceName(raw: string, max: number): string {
  const cleaned = raw
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, "-")
    .replace(/^[^a-z]+/, "")
    .slice(0, max)
    .replace(/-+$/, "");
  return cleaned || "model";
}

/**
 * A client-side `kubectl apply` stores the whole object (base64 and all) in the
 * last-applied-configuration annotation, and the API server allows 256 KiB of annotations.
 */
function tooLargeForClientSideApply(archive: Uint8Array): boolean {
  return Math.ceil(archive.length / 3) * 4 + 2048 > 256 * 1024;
}

/** The ConfigMap manifest: a comment with the command that made it, then the object. */
function configMapManifest(
  bundle: VerifiedBundle,
  archive: Uint8Array,
  name: string,
  namespace: string | undefined,
  argv: readonly string[],
): string {
  const { manifest, digest } = bundle;
  const labels: Record<string, string> = {
    "app.kubernetes.io/name": resourceName(manifest.name, 63),
    "app.kubernetes.io/component": "model-bundle",
    "app.kubernetes.io/part-of": "ddnn-fog",
  };
  if (manifest.version.length <= 63 && LABEL_VALUE.test(manifest.version))
    labels["app.kubernetes.io/version"] = manifest.version;
  const object = {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: {
      name,
      ...(namespace === undefined ? {} : { namespace }),
      labels,
      annotations: {
        "fog.ddnn.io/bundle": `${manifest.name} ${manifest.version}`,
        "fog.ddnn.io/bundle-sha256": digest,
      },
    },
    binaryData: { [CONFIGMAP_KEY]: Buffer.from(archive).toString("base64") },
  };
  const command = ["ddnn", "bundle", "pack", ...argv].map(shellWord).join(" ");
  return [
    `# Made by: ${command}`,
    `# The bundle ${manifest.name} ${manifest.version}; the sha256 of its ddnn.json, for the`,
    "# DDNNModel's spec.bundle.sha256, is",
    `#   ${digest}`,
    "# Do not edit: run the command again when the bundle changes.",
    ...(tooLargeForClientSideApply(archive)
      ? [
          "# Apply with kubectl apply --server-side (too large for a client-side apply's annotation).",
        ]
      : []),
    stringify(object, { lineWidth: 0 }),
  ].join("\n");
}

function shellWord(word: string): string {
  return /^[A-Za-z0-9_./:=@%+,-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

const TIERS = ["device", "edge", "server"] as const;

/** Stage -> tier: by name when every stage is named after a tier in order, else by position. */
export function defaultPlacement(manifest: Manifest): Record<string, string> {
  const names = manifest.stages.map((s) => s.name);
  const ranks = names.map((n) => TIERS.indexOf(n as (typeof TIERS)[number]));
  const byName = ranks.every((r, i) => r >= 0 && (i === 0 || r >= ranks[i - 1]!));
  return Object.fromEntries(
    names.map((n, i) => {
      if (byName) return [n, n];
      const last = i === names.length - 1;
      return [n, last ? "server" : i === 0 ? "device" : "edge"];
    }),
  );
}

function ddnnModelSnippet(
  manifest: Manifest,
  digest: string,
  source: { configMap: string } | { url: true },
  flags: PackFlags,
): Record<string, unknown> {
  const name = resourceName(manifest.name, 56);
  const file = `${name}-${manifest.version.replace(/[^A-Za-z0-9._-]+/g, "-")}.tar.gz`;
  return {
    apiVersion: "fog.ddnn.io/v1alpha1",
    kind: "DDNNModel",
    metadata: { name, ...(flags.namespace === undefined ? {} : { namespace: flags.namespace }) },
    spec: {
      bundle: {
        ...("configMap" in source
          ? { configMap: { name: source.configMap, key: CONFIGMAP_KEY } }
          : { url: `https://models.example/${file}` }), // where it is served
        sha256: digest,
      },
      placement: defaultPlacement(manifest),
      broker: { managed: {} },
    },
  };
}
