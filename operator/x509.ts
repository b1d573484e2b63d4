/**
 * Just enough X.509 for the operator to issue its managed brokers' certificates without
 * cert-manager (docs/security.md "TLS by default"): a DER writer for one certificate shape (a TLS
 * server certificate with DNS names, or a CA for tests), a DER reader for the fields of a CA
 * certificate it signs under, and Node's own crypto for keys and signatures. Node can parse and
 * verify certificates (X509Certificate) but not make them; nothing here implements cryptography.
 */
import {
  createHash,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  sign,
  X509Certificate,
} from "node:crypto";

// ---- DER writing (X.690): definite lengths, only the types a certificate needs ----

function tlv(tag: number, body: Uint8Array): Buffer {
  const n = body.length;
  const len =
    n < 0x80
      ? [n]
      : n < 0x100
        ? [0x81, n]
        : n < 0x10000
          ? [0x82, n >> 8, n & 0xff]
          : [0x83, n >> 16, (n >> 8) & 0xff, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...len]), body]);
}

const seq = (...items: Uint8Array[]) => tlv(0x30, Buffer.concat(items));
const set = (...items: Uint8Array[]) => tlv(0x31, Buffer.concat(items));
const explicit = (n: number, inner: Uint8Array) => tlv(0xa0 + n, inner);
const octets = (bytes: Uint8Array) => tlv(0x04, bytes);
const bits = (bytes: Uint8Array, unused = 0) =>
  tlv(0x03, Buffer.concat([Buffer.from([unused]), bytes]));
const boolTrue = () => Buffer.from([0x01, 0x01, 0xff]);
const utf8 = (text: string) => tlv(0x0c, Buffer.from(text, "utf8"));

/** A non-negative INTEGER from big-endian bytes (a 0x00 in front when the top bit is set). */
function unsigned(bytes: Uint8Array): Buffer {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  const b = Buffer.from(bytes.subarray(i));
  return tlv(0x02, b[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), b]) : b);
}

function oid(dotted: string): Buffer {
  const parts = dotted.split(".").map(Number);
  const out = [40 * parts[0]! + parts[1]!];
  for (const p of parts.slice(2)) {
    const chunk = [p & 0x7f];
    for (let v = Math.floor(p / 128); v > 0; v = Math.floor(v / 128))
      chunk.unshift(0x80 | (v & 0x7f));
    out.push(...chunk);
  }
  return tlv(0x06, Buffer.from(out));
}

/** UTCTime until 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5), to the second. */
function time(d: Date): Buffer {
  const iso = d.toISOString().replace(/[-:T]/g, "").slice(0, 14); // YYYYMMDDHHMMSS
  const year = d.getUTCFullYear();
  return year < 2050
    ? tlv(0x17, Buffer.from(`${iso.slice(2)}Z`, "ascii"))
    : tlv(0x18, Buffer.from(`${iso}Z`, "ascii"));
}

const OID = {
  commonName: "2.5.4.3",
  subjectKeyIdentifier: "2.5.29.14",
  keyUsage: "2.5.29.15",
  subjectAltName: "2.5.29.17",
  basicConstraints: "2.5.29.19",
  authorityKeyIdentifier: "2.5.29.35",
  extKeyUsage: "2.5.29.37",
  serverAuth: "1.3.6.1.5.5.7.3.1",
  ecdsaSha256: "1.2.840.10045.4.3.2",
  ecdsaSha384: "1.2.840.10045.4.3.3",
  rsaSha256: "1.2.840.113549.1.1.11",
  ed25519: "1.3.101.112",
} as const;

/** CN is at most 64 characters (RFC 5280 ub-common-name); names that matter are in the SAN. */
const commonName = (cn: string) => seq(set(seq(oid(OID.commonName), utf8(cn.slice(0, 64)))));

const extension = (id: string, critical: boolean, value: Uint8Array) =>
  seq(oid(id), ...(critical ? [boolTrue()] : []), octets(value));

/** How a key of the issuer signs: the AlgorithmIdentifier and the digest for crypto.sign. */
function signing(key: KeyObject): { algorithm: Buffer; digest: string | null } {
  switch (key.asymmetricKeyType) {
    case "ec": {
      const curve = key.asymmetricKeyDetails?.namedCurve;
      if (curve === "prime256v1") return { algorithm: seq(oid(OID.ecdsaSha256)), digest: "sha256" };
      if (curve === "secp384r1") return { algorithm: seq(oid(OID.ecdsaSha384)), digest: "sha384" };
      throw new Error(`CA keys on curve ${curve} are not supported (P-256 or P-384)`);
    }
    case "rsa":
      return { algorithm: seq(oid(OID.rsaSha256), Buffer.from([0x05, 0x00])), digest: "sha256" };
    case "ed25519":
      return { algorithm: seq(oid(OID.ed25519)), digest: null };
    default:
      throw new Error(
        `CA keys of type ${key.asymmetricKeyType} are not supported (EC, RSA or Ed25519)`,
      );
  }
}

// ---- DER reading: only walking a certificate's top-level fields ----

interface Element {
  tag: number;
  /** The whole element, header included. */
  raw: Buffer;
  body: Buffer;
}

function children(body: Buffer): Element[] {
  const out: Element[] = [];
  let i = 0;
  while (i < body.length) {
    const tag = body[i]!;
    let len = body[i + 1]!;
    let head = 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      if (n < 1 || n > 3) throw new Error("a DER length this certificate reader does not take");
      len = 0;
      for (let k = 0; k < n; k++) len = len * 256 + body[i + 2 + k]!;
      head += n;
    }
    if (i + head + len > body.length) throw new Error("a truncated DER element");
    out.push({
      tag,
      raw: body.subarray(i, i + head + len),
      body: body.subarray(i + head, i + head + len),
    });
    i += head + len;
  }
  return out;
}

/** The issuer-side facts of a CA certificate: its subject (bytes as they are) and key id. */
function caFacts(cert: X509Certificate): { subject: Buffer; keyId: Buffer } {
  const [certificate] = children(cert.raw);
  const tbs = children(children(certificate!.body)[0]!.body);
  // version [0] is there for v3; then serial, signature, issuer, validity, subject, spki, [3].
  const fields = tbs[0]!.tag === 0xa0 ? tbs.slice(1) : tbs;
  const subject = fields[4]!.raw;
  const spki = fields[5]!;
  const exts = tbs.find((e) => e.tag === 0xa3);
  if (exts) {
    for (const ext of children(children(exts.body)[0]!.body)) {
      const [id, ...rest] = children(ext.body);
      if (id!.raw.equals(oid(OID.subjectKeyIdentifier))) {
        const value = rest[rest.length - 1]!.body; // OCTET STRING holding an OCTET STRING
        return { subject, keyId: children(value)[0]!.body };
      }
    }
  }
  // RFC 5280 4.2.1.2 method (1), what Go and OpenSSL write: SHA-1 of the subjectPublicKey bits.
  const publicKeyBits = children(spki.body)[1]!.body.subarray(1);
  return { subject, keyId: createHash("sha1").update(publicKeyBits).digest() };
}

function keyId(publicKey: KeyObject): Buffer {
  const spki = publicKey.export({ type: "spki", format: "der" });
  const publicKeyBits = children(children(spki)[0]!.body)[1]!.body.subarray(1);
  return createHash("sha1").update(publicKeyBits).digest();
}

// ---- Certificates ----

export interface Issuer {
  /** The CA certificate, PEM. */
  certPem: string;
  key: KeyObject;
}

export interface IssuedPair {
  certPem: string;
  /** PKCS#8 PEM. */
  keyPem: string;
}

function pem(label: string, der: Buffer): string {
  const lines = der
    .toString("base64")
    .match(/.{1,64}/g)!
    .join("\n");
  return `-----BEGIN ${label}-----\n${lines}\n-----END ${label}-----\n`;
}

function certificate(
  tbsFields: {
    subject: Buffer;
    issuer: Buffer;
    publicKey: KeyObject;
    notBefore: Date;
    notAfter: Date;
  },
  extensions: Buffer[],
  signer: KeyObject,
): string {
  const { algorithm, digest } = signing(signer);
  const serial = randomBytes(16);
  serial[0]! &= 0x7f;
  serial[0]! |= 0x01; // positive and 16 bytes long
  const tbs = seq(
    explicit(0, unsigned(Buffer.from([2]))),
    unsigned(serial),
    algorithm,
    tbsFields.issuer,
    seq(time(tbsFields.notBefore), time(tbsFields.notAfter)),
    tbsFields.subject,
    tbsFields.publicKey.export({ type: "spki", format: "der" }),
    explicit(3, seq(...extensions)),
  );
  const signature = sign(digest, tbs, signer);
  return pem("CERTIFICATE", seq(tbs, algorithm, bits(signature)));
}

/**
 * A TLS server certificate for `dnsNames` (the first is the CN too), on a new P-256 key, signed by
 * `issuer`, valid from five minutes before `now` (clock skew) for `days`.
 */
export function issueServerCertificate(
  issuer: Issuer,
  dnsNames: readonly string[],
  now: Date,
  days: number,
): IssuedPair {
  if (dnsNames.length === 0) throw new Error("a server certificate needs at least one DNS name");
  const ca = new X509Certificate(issuer.certPem);
  if (!ca.ca)
    throw new Error("the issuer's certificate is not a CA certificate (basicConstraints)");
  if (!ca.publicKey.equals(createPublicKey(issuer.key)))
    throw new Error("the issuer's key does not belong to its certificate");
  const facts = caFacts(ca);
  const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const san = seq(...dnsNames.map((n) => tlv(0x82, Buffer.from(n, "ascii"))));
  const certPem = certificate(
    {
      subject: commonName(dnsNames[0]!),
      issuer: facts.subject,
      publicKey,
      notBefore: new Date(now.getTime() - 5 * 60_000),
      notAfter: new Date(now.getTime() + days * 86_400_000),
    },
    [
      extension(OID.basicConstraints, true, seq()),
      extension(OID.keyUsage, true, bits(Buffer.from([0x80]), 7)), // digitalSignature
      extension(OID.extKeyUsage, false, seq(oid(OID.serverAuth))),
      extension(OID.subjectAltName, false, san),
      extension(OID.subjectKeyIdentifier, false, octets(keyId(publicKey))),
      extension(OID.authorityKeyIdentifier, false, seq(tlv(0x80, facts.keyId))),
    ],
    issuer.key,
  );
  return { certPem, keyPem: privateKey.export({ type: "pkcs8", format: "pem" }) as string };
}

/** A self-signed CA on a new P-256 key (tests, and `ddnn` commands that make a lab CA). */
export function createCertificateAuthority(name: string, now: Date, days: number): IssuedPair {
  const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const subject = commonName(name);
  const certPem = certificate(
    {
      subject,
      issuer: subject,
      publicKey,
      notBefore: new Date(now.getTime() - 5 * 60_000),
      notAfter: new Date(now.getTime() + days * 86_400_000),
    },
    [
      extension(OID.basicConstraints, true, seq(boolTrue())),
      extension(OID.keyUsage, true, bits(Buffer.from([0x06]), 1)), // keyCertSign, cRLSign
      extension(OID.subjectKeyIdentifier, false, octets(keyId(publicKey))),
    ],
    privateKey,
  );
  return { certPem, keyPem: privateKey.export({ type: "pkcs8", format: "pem" }) as string };
}
