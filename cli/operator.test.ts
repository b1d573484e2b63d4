/** `ddnn operator --broker-ca-dir`: the CA it issues broker certificates with, checked at start. */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError } from "../core/config.js";
import { createCertificateAuthority, issueServerCertificate } from "../operator/x509.js";
import { brokerCaOf } from "./operator.js";

const now = new Date();
function dir(files: Record<string, string>): string {
  const d = mkdtempSync(join(tmpdir(), "ddnn-ca-dir-"));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(d, name), text);
  return d;
}

describe("ddnn operator --broker-ca-dir", () => {
  const ca = createCertificateAuthority("test CA", now, 30);
  const other = createCertificateAuthority("other CA", now, 30);

  it("loads a CA and its key, and issues certificates under it", () => {
    const issuer = brokerCaOf(dir({ "tls.crt": ca.certPem, "tls.key": ca.keyPem }))!;
    expect(issuer.certPem).toBe(ca.certPem);
    const leaf = issueServerCertificate(issuer, ["m-broker.ns.svc"], now, 1);
    expect(new X509Certificate(leaf.certPem).checkIssued(new X509Certificate(ca.certPem))).toBe(
      true,
    );
  });

  it("is off, with a warning, while the directory has no certificate yet (the Secret is optional)", () => {
    expect(brokerCaOf(dir({}))).toBeUndefined();
    expect(brokerCaOf(undefined)).toBeUndefined();
  });

  it("refuses a certificate that is no CA, a key of another certificate, or garbage, in one line", () => {
    const issuer = { certPem: ca.certPem, key: createPrivateKey(ca.keyPem) };
    const leaf = issueServerCertificate(issuer, ["x.svc"], now, 1);
    const refusal = (files: Record<string, string>) => {
      try {
        brokerCaOf(dir(files));
        return "accepted";
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return (err as Error).message;
      }
    };
    expect(refusal({ "tls.crt": leaf.certPem, "tls.key": leaf.keyPem })).toMatch(
      /tls\.crt is not a CA certificate/,
    );
    expect(refusal({ "tls.crt": ca.certPem, "tls.key": other.keyPem })).toMatch(
      /tls\.key is not the key of tls\.crt/,
    );
    expect(refusal({ "tls.crt": "not a certificate", "tls.key": ca.keyPem })).toMatch(
      /--broker-ca-dir .*:/,
    );
    expect(refusal({ "tls.crt": ca.certPem })).toMatch(/--broker-ca-dir .*tls\.key|ENOENT/);
  });
});
