/**
 * A throw-away certificate authority for TLS upstreams (and clients) in tests.
 *
 * Certificates are built with node-forge; keys are generated and certificates signed with Node's
 * crypto (RSA-2048, sha256WithRSAEncryption): pure-JS key generation costs ~650 ms a key here.
 *
 *   const ca = createTestCa();
 *   const { certPem, keyPem } = ca.issueServerCert({ dnsNames: ['api.example.test'], ips: ['198.51.100.10'] });
 *   // trust: ca.certPem
 */
import crypto, { type KeyObject } from 'node:crypto';
import net from 'node:net';
import forge from 'node-forge';

export interface IssueOptions {
  /** subjectAltName DNS entries; the first one (or the first IP) is also the subject CN. */
  dnsNames?: readonly string[];
  /** subjectAltName IP entries, IPv4 or IPv6. */
  ips?: readonly string[];
  commonName?: string;
  /** Validity ended yesterday. */
  expired?: boolean;
  /** Validity starts tomorrow. */
  notYetValid?: boolean;
  /** Signed by its own key (issuer = subject), not by this CA: untrusted by anyone trusting the CA. */
  selfSigned?: boolean;
  /** Validity in days from now (default 30). */
  days?: number;
  /** Reuse this CA's one shared leaf key instead of generating one (~200 ms saved per certificate). */
  reuseKey?: boolean;
}

export interface IssuedCert {
  certPem: string;
  /** PKCS#8 PEM. */
  keyPem: string;
  /** Leaf followed by the CA certificate (for a self-signed leaf: the leaf alone). */
  chainPem: string;
  /** Lower-case hex serial number. */
  serial: string;
}

export interface TestCa {
  certPem: string;
  keyPem: string;
  commonName: string;
  issueServerCert(opts: IssueOptions): IssuedCert;
  issueClientCert(opts: IssueOptions): IssuedCert;
}

const DAY_MS = 24 * 3600 * 1000;

function newRsaKey(): { privateKey: KeyObject; publicPem: string; privatePem: string } {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    privateKey,
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}

function randomSerial(): string {
  const b = crypto.randomBytes(16);
  b[0] = (b[0] ?? 0) & 0x7f; // positive
  if (b[0] === 0) b[0] = 0x01; // no leading zero byte (DER integer minimality)
  return b.toString('hex');
}

/** Signs the certificate's TBS bytes with Node's crypto; forge only does the ASN.1. */
function signCert(cert: forge.pki.Certificate, key: KeyObject): void {
  const oid = forge.pki.oids.sha256WithRSAEncryption as string;
  cert.signatureOid = oid;
  cert.siginfo.algorithmOid = oid;
  // getTBSCertificate reads md.algorithm to encode the signature algorithm; sha256 matches the OID.
  cert.md = forge.md.sha256.create();
  const tbs = (forge.pki as unknown as { getTBSCertificate(c: forge.pki.Certificate): forge.asn1.Asn1 }).getTBSCertificate(cert);
  cert.tbsCertificate = tbs;
  const der = Buffer.from(forge.asn1.toDer(tbs).getBytes(), 'binary');
  cert.signature = crypto.sign('sha256', der, key).toString('binary');
}

function subjectAttrs(cn: string, org = 'Portcullis tests'): forge.pki.CertificateField[] {
  return [
    { name: 'commonName', value: cn },
    { name: 'organizationName', value: org },
  ];
}

function validity(cert: forge.pki.Certificate, opts: { expired?: boolean; notYetValid?: boolean; days?: number }): void {
  const now = Date.now();
  if (opts.expired) {
    cert.validity.notBefore = new Date(now - 30 * DAY_MS);
    cert.validity.notAfter = new Date(now - DAY_MS);
  } else if (opts.notYetValid) {
    cert.validity.notBefore = new Date(now + DAY_MS);
    cert.validity.notAfter = new Date(now + 30 * DAY_MS);
  } else {
    cert.validity.notBefore = new Date(now - 3600 * 1000); // clock-skew margin
    cert.validity.notAfter = new Date(now + (opts.days ?? 30) * DAY_MS);
  }
}

export function createTestCa(opts: { commonName?: string; days?: number } = {}): TestCa {
  const commonName = opts.commonName ?? `Portcullis Test CA ${crypto.randomBytes(3).toString('hex')}`;
  const caKey = newRsaKey();
  const caCert = forge.pki.createCertificate();
  caCert.publicKey = forge.pki.publicKeyFromPem(caKey.publicPem);
  caCert.serialNumber = randomSerial();
  validity(caCert, { days: opts.days ?? 365 });
  caCert.setSubject(subjectAttrs(commonName));
  caCert.setIssuer(subjectAttrs(commonName));
  caCert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  signCert(caCert, caKey.privateKey);
  const caCertPem = forge.pki.certificateToPem(caCert);

  let sharedLeafKey: ReturnType<typeof newRsaKey> | undefined;
  const issue = (o: IssueOptions, usage: 'server' | 'client'): IssuedCert => {
    const dnsNames = o.dnsNames ?? [];
    const ips = o.ips ?? [];
    for (const a of ips) if (net.isIP(a) === 0) throw new Error(`issue: '${a}' is not an IP address`);
    const cn = o.commonName ?? dnsNames[0] ?? ips[0];
    if (cn === undefined) throw new Error('issue: give at least one of dnsNames, ips, commonName');
    const key = o.reuseKey ? (sharedLeafKey ??= newRsaKey()) : newRsaKey();
    const cert = forge.pki.createCertificate();
    cert.publicKey = forge.pki.publicKeyFromPem(key.publicPem);
    cert.serialNumber = randomSerial();
    validity(cert, o);
    cert.setSubject(subjectAttrs(cn));
    cert.setIssuer(o.selfSigned ? subjectAttrs(cn) : caCert.subject.attributes);
    const altNames = [
      ...dnsNames.map((value) => ({ type: 2, value })),
      ...ips.map((ip) => ({ type: 7, ip })),
    ];
    const exts: object[] = [
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      usage === 'server' ? { name: 'extKeyUsage', serverAuth: true } : { name: 'extKeyUsage', clientAuth: true },
      { name: 'subjectKeyIdentifier' },
    ];
    if (altNames.length > 0) exts.push({ name: 'subjectAltName', altNames });
    if (!o.selfSigned) {
      exts.push({ name: 'authorityKeyIdentifier', keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() });
    }
    cert.setExtensions(exts);
    signCert(cert, o.selfSigned ? key.privateKey : caKey.privateKey);
    const certPem = forge.pki.certificateToPem(cert);
    return {
      certPem,
      keyPem: key.privatePem,
      chainPem: o.selfSigned ? certPem : certPem + caCertPem,
      serial: cert.serialNumber,
    };
  };

  return {
    certPem: caCertPem,
    keyPem: caKey.privatePem,
    commonName,
    issueServerCert: (o) => issue(o, 'server'),
    issueClientCert: (o) => issue(o, 'client'),
  };
}

let defaultCa: TestCa | undefined;
/** One CA per test process, created on first use. */
export function defaultTestCa(): TestCa {
  defaultCa ??= createTestCa();
  return defaultCa;
}

/** Issues a server certificate from `ca` (default: this process's default test CA). */
export function issueServerCert(opts: IssueOptions, ca: TestCa = defaultTestCa()): IssuedCert {
  return ca.issueServerCert(opts);
}
