import forge from 'node-forge';
import { createHash, randomBytes, sign, type KeyObject } from 'node:crypto';

/**
 * Certificate building blocks shared by the CA and the leaves: node-forge lays out the
 * TBSCertificate, Node's crypto (OpenSSL) signs its DER bytes.
 */

/** sha256WithRSAEncryption (RFC 4055): PKCS#1 v1.5 with SHA-256, what `crypto.sign('sha256', …, rsaKey)` produces. */
export const SHA256_WITH_RSA_OID = '1.2.840.113549.1.1.11';
export const NAME_CONSTRAINTS_OID = '2.5.29.30';

/** Backdating of notBefore, for peers whose clock is behind ours. */
export const CLOCK_SKEW_MS = 5 * 60_000;

const getTBSCertificate = (forge.pki as unknown as {
  getTBSCertificate(cert: forge.pki.Certificate): forge.asn1.Asn1;
}).getTBSCertificate;

/** A random positive 128-bit serial number, as the hex string node-forge expects. */
export function randomSerialHex(): string {
  const b = randomBytes(16);
  // positive (top bit clear) and minimal DER (no leading zero octet): first octet in 0x01..0x7f
  b[0] = (b[0]! & 0x7f) || 0x01;
  return b.toString('hex');
}

/**
 * Sign a node-forge certificate with a Node `KeyObject` (RSA): fix the signature algorithm in both
 * places it appears, DER-encode the TBSCertificate, sign it with OpenSSL and attach the signature
 * and the exact TBS that was signed, so `certificateToPem` re-emits those bytes.
 */
export function signCertificate(cert: forge.pki.Certificate, key: KeyObject): void {
  cert.siginfo.algorithmOid = SHA256_WITH_RSA_OID;
  cert.signatureOid = SHA256_WITH_RSA_OID;
  const tbs = getTBSCertificate(cert);
  const der = Buffer.from(forge.asn1.toDer(tbs).getBytes(), 'binary');
  cert.tbsCertificate = tbs;
  cert.signature = sign('sha256', der, key).toString('binary');
}

/** RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits (the PKCS#1 RSAPublicKey DER). */
export function keyIdentifier(publicKey: KeyObject): Buffer {
  return createHash('sha1').update(publicKey.export({ type: 'pkcs1', format: 'der' })).digest();
}

/** DER date floor: certificates carry whole seconds. */
export function floorToSecond(ms: number): number {
  return Math.floor(ms / 1000) * 1000;
}

export function octetString(bytes: Buffer): forge.asn1.Asn1 {
  return forge.asn1.create(forge.asn1.Class.UNIVERSAL, forge.asn1.Type.OCTETSTRING, false, bytes.toString('binary'));
}

const ipUtil = forge.util as unknown as {
  bytesFromIP(ip: string): string | null;
  bytesToIP(bytes: string): string | null;
};

/** Parse an IP literal into the 4 or 16 octets of an iPAddress GeneralName. */
export function ipBytes(ip: string): Buffer {
  const b = ipUtil.bytesFromIP(ip);
  if (b === null) throw new TypeError('not an IP literal');
  return Buffer.from(b, 'binary');
}

/** The IP literal for 4 or 16 octets (forge binary string), or null. */
export function ipFromBytes(bytes: string): string | null {
  return ipUtil.bytesToIP(bytes);
}
