/**
 * The operator's certificates (operator/x509.ts), checked by the two X.509 implementations at
 * hand: Node's X509Certificate and OpenSSL's `verify` in strict mode (what Mosquitto links).
 */
import { execFileSync } from "node:child_process";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createCertificateAuthority, type Issuer, issueServerCertificate } from "./x509.js";

const now = new Date("2026-12-01T12:00:00Z");
const work = mkdtempSync(join(tmpdir(), "ddnn-x509-"));
const file = (name: string, text: string) => {
  const path = join(work, name);
  writeFileSync(path, text);
  return path;
};
/** `openssl verify -x509_strict` of `cert` under `ca`, at `at`: "OK" or its complaint. */
function opensslVerify(caPem: string, certPem: string, at = now): string {
  try {
    return execFileSync(
      "openssl",
      [
        "verify",
        "-x509_strict",
        "-purpose",
        "sslserver",
        "-attime",
        String(Math.floor(at.getTime() / 1000)),
        "-CAfile",
        file("ca.pem", caPem),
        file("cert.pem", certPem),
      ],
      { encoding: "utf8", stdio: "pipe" },
    ).trim();
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return `${e.stdout ?? ""}${e.stderr ?? ""}` || String(err);
  }
}

describe("certificates the operator issues", () => {
  const ca = createCertificateAuthority("ddnn test CA", now, 3650);
  const issuer: Issuer = { certPem: ca.certPem, key: createPrivateKey(ca.keyPem) };
  const names = ["fashion-broker.fog.svc", "fashion-broker.fog", "fashion-broker"];

  it("a P-256 server certificate for the names, valid for the days asked, that OpenSSL accepts strictly", () => {
    const leaf = issueServerCertificate(issuer, names, now, 90);
    const cert = new X509Certificate(leaf.certPem);
    expect(cert.subject).toBe("CN=fashion-broker.fog.svc");
    expect(cert.issuer).toBe("CN=ddnn test CA");
    expect(cert.subjectAltName).toBe(names.map((n) => `DNS:${n}`).join(", "));
    expect(cert.ca).toBe(false);
    expect(cert.checkHost("fashion-broker.fog.svc")).toBe("fashion-broker.fog.svc");
    expect(cert.checkHost("other-broker.fog.svc")).toBeUndefined();
    expect(cert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.1"]); // serverAuth
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(cert.checkPrivateKey(createPrivateKey(leaf.keyPem))).toBe(true);
    expect(new Date(cert.validFrom).getTime()).toBe(now.getTime() - 5 * 60_000);
    expect(new Date(cert.validTo).getTime()).toBe(now.getTime() + 90 * 86_400_000);
    expect(opensslVerify(ca.certPem, leaf.certPem)).toMatch(/: OK$/);
    // Outside its validity, or under another CA, it is refused.
    const late = new Date(now.getTime() + 91 * 86_400_000);
    expect(opensslVerify(ca.certPem, leaf.certPem, late)).toMatch(/expired/);
    const other = createCertificateAuthority("other CA", now, 30);
    expect(opensslVerify(other.certPem, leaf.certPem)).toMatch(/unable to get local issuer/);
    // Every issue is a new key and serial.
    const again = new X509Certificate(issueServerCertificate(issuer, names, now, 90).certPem);
    expect(again.serialNumber).not.toBe(cert.serialNumber);
    expect(again.publicKey.equals(cert.publicKey)).toBe(false);
  });

  it("signs under an RSA CA too (Helm's genCA makes RSA keys), with the CA's own key id", () => {
    const key = file("rsa-ca.key", "");
    const crt = file("rsa-ca.crt", "");
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=rsa CA/O=ddnn",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        key,
        "-out",
        crt,
      ],
      { stdio: "pipe" },
    );
    const rsa: Issuer = {
      certPem: readFileSync(crt, "utf8"),
      key: createPrivateKey(readFileSync(key)),
    };
    const leaf = issueServerCertificate(rsa, ["m-broker.ns.svc"], new Date(), 10);
    // The issuer's name exactly as the CA's subject (two attributes here), and OpenSSL's chain.
    expect(new X509Certificate(leaf.certPem).issuer).toBe("CN=rsa CA\nO=ddnn");
    expect(opensslVerify(rsa.certPem, leaf.certPem, new Date())).toMatch(/: OK$/);
  });

  it("dates from 2050 as GeneralizedTime, and a CN cut to 64 characters (the names stay whole)", () => {
    const long = `${"m".repeat(60)}-broker.a-long-namespace.svc`;
    const leaf = issueServerCertificate(issuer, [long], now, 9000); // ends in 2051
    const cert = new X509Certificate(leaf.certPem);
    expect(new Date(cert.validTo).getUTCFullYear()).toBe(2051);
    expect(cert.subject).toBe(`CN=${long.slice(0, 64)}`);
    expect(cert.subjectAltName).toBe(`DNS:${long}`);
  });

  it("refuses an issuer that is not a CA, a key that is not the CA's, and no names", () => {
    const leaf = issueServerCertificate(issuer, names, now, 1);
    const notCa: Issuer = { certPem: leaf.certPem, key: createPrivateKey(leaf.keyPem) };
    expect(() => issueServerCertificate(notCa, names, now, 1)).toThrow(/not a CA certificate/);
    const wrongKey: Issuer = { certPem: ca.certPem, key: createPrivateKey(leaf.keyPem) };
    expect(() => issueServerCertificate(wrongKey, names, now, 1)).toThrow(
      /key does not belong to its certificate/,
    );
    expect(() => issueServerCertificate(issuer, [], now, 1)).toThrow(/at least one DNS name/);
  });
});
