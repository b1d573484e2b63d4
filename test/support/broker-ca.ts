/**
 * The operator's broker CA and key for tests, as the chart makes them (docs/security.md): made
 * once per test process, with the operator's own certificate code.
 */
import { createPrivateKey } from "node:crypto";
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCertificateAuthority, type Issuer } from "../../operator/x509.js";

const pair = createCertificateAuthority("ddnn test broker CA", new Date(), 30);

export const testBrokerCa: Issuer = { certPem: pair.certPem, key: createPrivateKey(pair.keyPem) };
export const testBrokerKey = new Uint8Array(32).fill(9);

/** The CA as the chart's Secret mounts it (tls.crt, tls.key), for `ddnn operator --broker-ca-dir`. */
export function writeBrokerCaDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "ddnn-broker-ca-"));
  chmodSync(dir, 0o700);
  writeFileSync(join(dir, "tls.crt"), pair.certPem);
  writeFileSync(join(dir, "tls.key"), pair.keyPem, { mode: 0o600 });
  return dir;
}
