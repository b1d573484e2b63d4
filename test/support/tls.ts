/** A throw-away certificate authority and a broker certificate for 127.0.0.1, made with openssl. */
import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestPki {
  readonly dir: string;
  /** The CA that signed the broker's certificate. */
  readonly caFile: string;
  /** Another CA, which signed nothing the broker uses. */
  readonly otherCaFile: string;
  readonly certFile: string;
  readonly keyFile: string;
}

export function makeTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), "ddnn-pki-"));
  // Mosquitto reads its certificate after dropping root for its own user.
  chmodSync(dir, 0o755);
  const at = (f: string) => join(dir, f);
  const openssl = (...args: string[]) => execFileSync("openssl", args, { stdio: "pipe" });
  for (const ca of ["ca", "other-ca"])
    openssl(
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-days",
      "2",
      "-subj",
      `/CN=ddnn test ${ca}`,
      "-keyout",
      at(`${ca}.key`),
      "-out",
      at(`${ca}.pem`),
    );
  openssl(
    "req",
    "-new",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-subj",
    "/CN=127.0.0.1",
    "-keyout",
    at("broker.key"),
    "-out",
    at("broker.csr"),
  );
  writeFileSync(at("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  openssl(
    "x509",
    "-req",
    "-in",
    at("broker.csr"),
    "-CA",
    at("ca.pem"),
    "-CAkey",
    at("ca.key"),
    "-CAcreateserial",
    "-days",
    "2",
    "-extfile",
    at("san.ext"),
    "-out",
    at("broker.pem"),
  );
  for (const f of ["ca.pem", "other-ca.pem", "broker.pem", "broker.key"]) chmodSync(at(f), 0o644);
  return {
    dir,
    caFile: at("ca.pem"),
    otherCaFile: at("other-ca.pem"),
    certFile: at("broker.pem"),
    keyFile: at("broker.key"),
  };
}
