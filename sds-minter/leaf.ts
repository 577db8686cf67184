import forge from 'node-forge';
import { inspect } from 'node:util';
import { type CaGeneration, issuerCapability } from './ca.js';
import { CaUnavailableError } from './errors.js';
import type { ParsedName } from './names.js';
import { CLOCK_SKEW_MS, floorToSecond, octetString, randomSerialHex } from './x509.js';

export const DEFAULT_LEAF_TTL_MS = 12 * 3600_000;
/** A leaf shorter-lived than this is not worth issuing (the CA is about to expire). */
export const MIN_LEAF_LIFETIME_MS = 10 * 60_000;
/** RFC 5280 ub-common-name: longer names go in the SAN only. */
const MAX_CN_LENGTH = 64;

export interface LeafInfo {
  name: string;
  kind: ParsedName['kind'];
  serialNumber: string;
  notBefore: string;
  notAfter: string;
  issuedAt: string;
  generation: number;
  caFingerprint256: string;
}

/**
 * A minted leaf certificate. Public fields are safe to log; the private key is reachable only
 * through `privateKeyPem()` and is redacted from `JSON.stringify` and `util.inspect`.
 */
export class Leaf {
  readonly #keyPem: string;

  /** @internal minted by `issueLeaf` */
  constructor(
    readonly name: string,
    readonly kind: ParsedName['kind'],
    readonly serialNumber: string,
    readonly notBefore: Date,
    readonly notAfter: Date,
    readonly issuedAt: Date,
    readonly generation: number,
    readonly caFingerprint256: string,
    /** the leaf certificate alone */
    readonly certPem: string,
    /** leaf then issuing CA, as served to clients */
    readonly chainPem: string,
    keyPem: string,
  ) {
    this.#keyPem = keyPem;
  }

  /** PKCS#8 PEM of the leaf key; for the SDS secret only. */
  privateKeyPem(): string {
    return this.#keyPem;
  }

  /** Lifetime in ms from issuance to notAfter. */
  get lifetimeMs(): number {
    return this.notAfter.getTime() - this.issuedAt.getTime();
  }

  info(): LeafInfo {
    return {
      name: this.name,
      kind: this.kind,
      serialNumber: this.serialNumber,
      notBefore: this.notBefore.toISOString(),
      notAfter: this.notAfter.toISOString(),
      issuedAt: this.issuedAt.toISOString(),
      generation: this.generation,
      caFingerprint256: this.caFingerprint256,
    };
  }

  toJSON(): LeafInfo {
    return this.info();
  }

  [inspect.custom](): string {
    return `Leaf ${inspect({ ...this.info(), privateKey: '[redacted]' })}`;
  }
}

/**
 * Issue a leaf for an already-authorised, canonical name with the generation's shared leaf key:
 * one RSA signature, no key generation. Callers go through `Minter`, which checks the policy.
 */
export function issueLeaf(ca: CaGeneration, name: ParsedName, opts: { now: number; ttlMs: number }): Leaf {
  const cap = issuerCapability(ca);
  const notAfterMs = floorToSecond(Math.min(opts.now + opts.ttlMs, ca.notAfter.getTime()));
  if (notAfterMs - opts.now < MIN_LEAF_LIFETIME_MS) {
    throw new CaUnavailableError(
      `CA generation ${ca.generation} expires at ${ca.notAfter.toISOString()}: too late to issue leaves; rotate the CA`,
    );
  }
  const notBeforeMs = floorToSecond(opts.now - CLOCK_SKEW_MS);

  const cert = forge.pki.createCertificate();
  cert.version = 2;
  cert.serialNumber = randomSerialHex();
  cert.publicKey = cap.leafKey.publicKey;
  cert.validity.notBefore = new Date(notBeforeMs);
  cert.validity.notAfter = new Date(notAfterMs);
  // Under DNS name constraints, OpenSSL checks a CN that looks like a host name even for an IP
  // leaf; a dotted IP looks like one. Such leaves carry the name in the SAN only.
  const withCn = name.name.length <= MAX_CN_LENGTH && !(name.kind === 'ip' && ca.nameConstraints !== null);
  cert.setSubject(withCn ? [{ shortName: 'CN', value: name.name }] : []);
  cert.setIssuer(cap.issuerAttributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    {
      name: 'subjectAltName',
      // RFC 5280 §4.2.1.6: critical when the subject is empty
      critical: !withCn,
      altNames: [name.kind === 'ip' ? { type: 7, ip: name.name } : { type: 2, value: name.name }],
    },
    { name: 'subjectKeyIdentifier', value: octetString(cap.leafKey.keyId) },
    { name: 'authorityKeyIdentifier', keyIdentifier: cap.keyId.toString('binary') },
  ]);
  cap.sign(cert);
  const certPem = forge.pki.certificateToPem(cert).replace(/\r\n/g, '\n');
  return new Leaf(
    name.name,
    name.kind,
    cert.serialNumber,
    new Date(notBeforeMs),
    new Date(notAfterMs),
    new Date(opts.now),
    ca.generation,
    ca.fingerprint256,
    certPem,
    certPem + ca.certPem,
    cap.leafKey.keyPem,
  );
}
