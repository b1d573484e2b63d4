/**
 * An in-cluster device agent's broker identity (docs/security.md, "Device identity"): the agent
 * POSTs its projected ServiceAccount token to the operator (`--identity-url`) and gets back the
 * user name and password of its node's broker identity. Nothing is written to disk; the password
 * lives in the agent's memory and its broker connection only.
 */
import { readFile } from "node:fs/promises";
import * as http from "node:http";
import * as https from "node:https";
import { setTimeout as sleep } from "node:timers/promises";
import { ConfigError, isLoopbackHost } from "../core/config.js";

/** The path of the operator's endpoint (operator/device-identity.ts IDENTITY_PATH). */
const PATH = "/v1/device-credentials";

export interface IdentityRequest {
  /** The operator's identity endpoint: http(s)://host:port (the path is added). */
  url: string;
  /** The projected ServiceAccount token file (audience ddnn-broker); read on every attempt. */
  tokenFile: string;
  /** PEM file of the CA that signs an https:// endpoint's certificate. */
  caFile?: string | undefined;
  /** The DDNNModel's name (its namespace is the Pod's, which the token carries). */
  model: string;
  /** The identity must be this node's (the agent's device id, its reply topic). */
  deviceId: string;
  /** Accept a plaintext endpoint on another host. */
  insecure?: boolean | undefined;
  /** Keep trying this long while the operator is unreachable or answers 5xx. */
  retryForMs?: number;
  log?: { info(m: string): void; warn(m: string): void };
}

export interface BrokerIdentityGrant {
  username: string;
  password: string;
}

/** A refusal that retrying will not change (4xx): the message is the operator's. */
class Refused extends Error {}

export async function fetchDeviceIdentity(req: IdentityRequest): Promise<BrokerIdentityGrant> {
  let url: URL;
  try {
    url = new URL(PATH, req.url);
  } catch {
    throw new ConfigError(`--identity-url: ${req.url} is not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new ConfigError(`--identity-url: ${req.url} is not http:// or https://`);
  if (url.protocol === "http:" && !isLoopbackHost(url.hostname) && !req.insecure)
    throw new ConfigError(
      `refusing a plaintext identity endpoint ${url.origin}: the broker password would cross the network unencrypted; use https:// (with --identity-ca) or pass --insecure`,
    );
  const ca = req.caFile ? await readFile(req.caFile) : undefined;
  const deadline = Date.now() + (req.retryForMs ?? 60_000);
  let wait = 500;
  for (;;) {
    try {
      const token = (await readFile(req.tokenFile, "utf8")).trim();
      if (token === "") throw new Refused(`${req.tokenFile} is empty`);
      const grant = await requestDeviceIdentity(url, token, req.model, { ca });
      if (grant.username.split("/").at(-1) !== req.deviceId)
        throw new ConfigError(
          `the operator issued ${grant.username}, which is not device ${req.deviceId}: the device id must be the node's name (<node>-view<v> for a view's agent)`,
        );
      req.log?.info(`broker identity ${grant.username} from ${url.origin}`);
      return grant;
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      const message = err instanceof Error ? err.message : String(err);
      if (err instanceof Refused)
        throw new ConfigError(`the operator refused this device's identity: ${message}`);
      if (Date.now() + wait > deadline)
        throw new ConfigError(`no broker identity from ${url.origin}: ${message}`);
      req.log?.warn(`broker identity from ${url.origin}: ${message}; retrying`);
      await sleep(wait);
      wait = Math.min(wait * 2, 5_000);
    }
  }
}

/**
 * One POST of `token` to the endpoint at `url` (its full URL, path included) for `model`'s
 * identity. `servername` names the endpoint's certificate where `url` holds an address (a test
 * that reaches the operator's Pod by its IP). Rejects with the operator's message on a 4xx.
 */
export function requestDeviceIdentity(
  url: URL,
  token: string,
  model: string,
  { ca, servername }: { ca?: Buffer | undefined; servername?: string } = {},
): Promise<BrokerIdentityGrant> {
  const body = JSON.stringify({ model });
  const options: https.RequestOptions = {
    method: "POST",
    headers: {
      Authorization: `Bearer ${token}`,
      "Content-Type": "application/json",
      "Content-Length": Buffer.byteLength(body),
    },
    timeout: 10_000,
    ...(ca ? { ca } : {}),
    ...(servername ? { servername } : {}),
  };
  const send = url.protocol === "https:" ? https.request : http.request;
  return new Promise((resolve, reject) => {
    const r = send(url, options, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", reject);
      res.on("end", () => {
        const status = res.statusCode ?? 0;
        let json: { username?: unknown; password?: unknown; error?: unknown } = {};
        try {
          json = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        } catch {
          // An answer that is not JSON: reported by its status below.
        }
        const why = typeof json.error === "string" ? json.error : `HTTP ${status}`;
        if (status >= 500 || status === 0) return reject(new Error(why));
        if (status !== 200) return reject(new Refused(`${status}: ${why}`));
        if (typeof json.username !== "string" || typeof json.password !== "string")
          return reject(new Refused("the answer has no username and password"));
        resolve({ username: json.username, password: json.password });
      });
    });
    r.on("timeout", () => r.destroy(new Error("no answer in 10 s")));
    r.on("error", reject);
    r.end(body);
  });
}
