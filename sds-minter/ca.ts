import forge from 'node-forge';
import {
  X509Certificate,
  createPrivateKey,
  createPublicKey,
  generateKeyPair as generateKeyPairCb,
  type KeyObject,
} from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { inspect, promisify } from 'node:util';
import type { Logger } from '../common/logger.js';
import type { EventSink } from '../common/events.js';
import { CaUnavailableError } from './errors.js';
import { ensurePrivateDir, readPrivateFile, readPublicFile, writeFileAtomic } from './fsutil.js';
import { parseName } from './names.js';
import {
  CLOCK_SKEW_MS,
  NAME_CONSTRAINTS_OID,
  floorToSecond,
  ipBytes,
  ipFromBytes,
  keyIdentifier,
  octetString,
  randomSerialHex,
  signCertificate,
} from './x509.js';

const generateKeyPair = promisify(generateKeyPairCb);

/** Milliseconds since the epoch. Injected so tests can move time. */
export type Clock = () => number;

/** RSA-2048 for the CA and for the leaves (see README of this module / the report for why). */
export const RSA_MODULUS_BITS = 2048;
export const DEFAULT_CA_VALIDITY_MS = 365 * 24 * 3600_000;

/** Name constraints of a CA generation: the only names it can vouch for. */
export interface NameConstraintSet {
  /** dNSName subtrees: `example.com` permits `example.com` and every name below it */
  dns: string[];
  /** exact IP addresses (a /32 or /128 each); when empty, every IP address is excluded */
  ips: string[];
}

/** Used as the only permitted DNS subtree when the policy has no bump host (RFC 2606 `.invalid`). */
export const NO_DNS_PLACEHOLDER = 'portcullis.invalid';

interface LeafKeyMaterial {
  keyPem: string;
  publicKey: forge.pki.rsa.PublicKey;
  keyId: Buffer;
}

interface GenerationSecrets {
  caKey: KeyObject | null;
  leafKey: LeafKeyMaterial | null;
}

/** What the leaf issuer needs from a generation. Not exported from the package index. */
export interface IssuerCapability {
  sign(cert: forge.pki.Certificate): void;
  issuerAttributes: forge.pki.CertificateField[];
  keyId: Buffer;
  leafKey: LeafKeyMaterial;
}

let issuerOf: (gen: CaGeneration) => IssuerCapability;

/**
 * One generation of the deployment CA. Public fields are safe to log; the CA private key and the
 * generation's leaf key live in private fields that neither `JSON.stringify` nor `util.inspect`
 * reach, and both are redacted explicitly as well.
 */
export class CaGeneration {
  readonly fingerprint256: string;
  readonly subject: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly serialNumber: string;
  readonly keyId: string;
  readonly #cert: forge.pki.Certificate;
  readonly #keyId: Buffer;
  readonly #secrets: GenerationSecrets;

  private constructor(
    readonly generation: number,
    readonly certPem: string,
    cert: forge.pki.Certificate,
    x509: X509Certificate,
    keyId: Buffer,
    readonly nameConstraints: NameConstraintSet | null,
    caKey: KeyObject | null,
  ) {
    this.#cert = cert;
    this.#keyId = keyId;
    this.#secrets = { caKey, leafKey: null };
    this.fingerprint256 = x509.fingerprint256;
    this.subject = x509.subject.replace(/\n/g, ', ');
    this.notBefore = new Date(cert.validity.notBefore.getTime());
    this.notAfter = new Date(cert.validity.notAfter.getTime());
    this.serialNumber = x509.serialNumber;
    this.keyId = keyId.toString('hex');
  }

  static {
    issuerOf = (gen: CaGeneration): IssuerCapability => {
      const { caKey, leafKey } = gen.#secrets;
      if (caKey === null) throw new CaUnavailableError(`CA generation ${gen.generation} has no signing key loaded`);
      if (leafKey === null) throw new CaUnavailableError(`CA generation ${gen.generation} has no leaf key`);
      return {
        sign: (cert) => signCertificate(cert, caKey),
        issuerAttributes: gen.#cert.subject.attributes,
        keyId: gen.#keyId,
        leafKey,
      };
    };
  }

  /** @internal build from parts; use `createCaGeneration` / `loadCaGeneration`. */
  static fromParts(
    generation: number,
    certPem: string,
    caKey: KeyObject | null,
  ): CaGeneration {
    let cert: forge.pki.Certificate;
    let x509: X509Certificate;
    try {
      cert = forge.pki.certificateFromPem(certPem);
      x509 = new X509Certificate(certPem);
    } catch (e) {
      throw new CaUnavailableError(`CA generation ${generation}: certificate cannot be parsed`, { cause: e });
    }
    if (!x509.ca) throw new CaUnavailableError(`CA generation ${generation}: certificate is not a CA certificate`);
    if (!x509.verify(x509.publicKey)) {
      throw new CaUnavailableError(`CA generation ${generation}: certificate is not validly self-signed`);
    }
    if (caKey !== null) {
      const fromKey = createPublicKey(caKey).export({ type: 'spki', format: 'der' });
      const fromCert = x509.publicKey.export({ type: 'spki', format: 'der' });
      if (!fromKey.equals(fromCert)) {
        throw new CaUnavailableError(`CA generation ${generation}: private key does not match the certificate`);
      }
    }
    const skiExt = cert.getExtension('subjectKeyIdentifier') as { subjectKeyIdentifier?: string } | undefined;
    const keyId = skiExt?.subjectKeyIdentifier
      ? Buffer.from(skiExt.subjectKeyIdentifier, 'hex')
      : keyIdentifier(x509.publicKey);
    return new CaGeneration(generation, certPem, cert, x509, keyId, readNameConstraints(cert), caKey);
  }

  /** True while the CA key is in memory (current generation); false for a retiring one. */
  get canSign(): boolean {
    return this.#secrets.caKey !== null;
  }

  /** Whether this CA's name constraints (if any) permit a leaf for `san` (canonical leaf name). */
  permits(san: string): boolean {
    const nc = this.nameConstraints;
    if (nc === null) return true;
    const p = parseName(san);
    if (p === null) return false;
    if (p.kind === 'ip') return nc.ips.includes(p.name);
    const host = p.kind === 'wildcard' ? p.name.slice(2) : p.name;
    // a wildcard leaf's names are all below `host`, so `host` being inside a subtree is enough
    return nc.dns.some((d) => host === d || host.endsWith(`.${d}`));
  }

  /** @internal give the generation its leaf key pair (one per generation, in memory only). */
  async prepareLeafKey(): Promise<void> {
    if (this.#secrets.leafKey !== null) return;
    const { privateKey, publicKey } = await generateKeyPair('rsa', { modulusLength: RSA_MODULUS_BITS });
    this.#secrets.leafKey = {
      keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      publicKey: forge.pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }).toString()),
      keyId: keyIdentifier(publicKey),
    };
  }

  /** @internal forget the CA signing key and leaf key (the generation is retiring). */
  dropKeys(): void {
    this.#secrets.caKey = null;
    this.#secrets.leafKey = null;
  }

  /** Public description (no key material). */
  info(): CaInfo {
    return {
      generation: this.generation,
      subject: this.subject,
      serialNumber: this.serialNumber,
      fingerprint256: this.fingerprint256,
      keyId: this.keyId,
      notBefore: this.notBefore.toISOString(),
      notAfter: this.notAfter.toISOString(),
      canSign: this.canSign,
      nameConstraints: this.nameConstraints,
    };
  }

  toJSON(): CaInfo {
    return this.info();
  }

  [inspect.custom](): string {
    return `CaGeneration ${inspect({ ...this.info(), key: '[redacted]' })}`;
  }
}

export interface CaInfo {
  generation: number;
  subject: string;
  serialNumber: string;
  fingerprint256: string;
  keyId: string;
  notBefore: string;
  notAfter: string;
  canSign: boolean;
  nameConstraints: NameConstraintSet | null;
}

/** @internal the signing capability of a generation; only the leaf issuer uses it. */
export function issuerCapability(gen: CaGeneration): IssuerCapability {
  return issuerOf(gen);
}

export interface CreatedCa {
  ca: CaGeneration;
  keyPem: string;
}

/** Generate a new CA key pair (Node crypto) and self-signed certificate (forge layout, OpenSSL signature). */
export async function createCaGeneration(opts: {
  generation: number;
  deploymentId: string;
  now: number;
  validityMs: number;
  nameConstraints: NameConstraintSet | null;
}): Promise<CreatedCa> {
  const { privateKey, publicKey } = await generateKeyPair('rsa', { modulusLength: RSA_MODULUS_BITS });
  const keyId = keyIdentifier(publicKey);
  const cert = forge.pki.createCertificate();
  cert.version = 2;
  cert.serialNumber = randomSerialHex();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }).toString());
  cert.validity.notBefore = new Date(floorToSecond(opts.now - CLOCK_SKEW_MS));
  cert.validity.notAfter = new Date(floorToSecond(opts.now + opts.validityMs));
  const attrs: forge.pki.CertificateField[] = [
    { shortName: 'O', value: 'Portcullis' },
    { shortName: 'OU', value: `generation ${opts.generation}` },
    { shortName: 'CN', value: `Portcullis deployment CA ${opts.deploymentId}` },
  ];
  cert.setSubject(attrs);
  cert.setIssuer(attrs);
  const exts: unknown[] = [
    { name: 'basicConstraints', cA: true, pathLenConstraint: 0, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier', value: octetString(keyId) },
    { name: 'authorityKeyIdentifier', keyIdentifier: keyId.toString('binary') },
  ];
  if (opts.nameConstraints !== null) {
    exts.push({ id: NAME_CONSTRAINTS_OID, critical: true, value: nameConstraintsAsn1(opts.nameConstraints) });
  }
  cert.setExtensions(exts);
  signCertificate(cert, privateKey);
  const certPem = forge.pki.certificateToPem(cert).replace(/\r\n/g, '\n');
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  return { ca: CaGeneration.fromParts(opts.generation, certPem, privateKey), keyPem };
}

function nameConstraintsAsn1(nc: NameConstraintSet): forge.asn1.Asn1 {
  const { asn1 } = forge;
  const subtree = (gn: forge.asn1.Asn1) => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [gn]);
  const dnsName = (d: string) => asn1.create(asn1.Class.CONTEXT_SPECIFIC, 2, false, d);
  const ipRange = (addrAndMask: Buffer) =>
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 7, false, addrAndMask.toString('binary'));
  const dns = nc.dns.length > 0 ? nc.dns : [NO_DNS_PLACEHOLDER];
  const permitted = dns.map((d) => subtree(dnsName(d)));
  for (const ip of nc.ips) {
    const addr = ipBytes(ip);
    permitted.push(subtree(ipRange(Buffer.concat([addr, Buffer.alloc(addr.length, 0xff)]))));
  }
  const parts = [asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, permitted)];
  if (nc.ips.length === 0) {
    // no IP literal may be vouched for: exclude all of IPv4 and IPv6
    parts.push(
      asn1.create(asn1.Class.CONTEXT_SPECIFIC, 1, true, [
        subtree(ipRange(Buffer.alloc(8, 0))),
        subtree(ipRange(Buffer.alloc(32, 0))),
      ]),
    );
  }
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, parts);
}

function readNameConstraints(cert: forge.pki.Certificate): NameConstraintSet | null {
  const ext = cert.getExtension({ name: 'nameConstraints' }) as
    | { permittedSubtrees?: { type: number; value: string }[] }
    | undefined;
  if (!ext) return null;
  const dns: string[] = [];
  const ips: string[] = [];
  for (const st of ext.permittedSubtrees ?? []) {
    if (st.type === 2) {
      if (st.value !== NO_DNS_PLACEHOLDER) dns.push(st.value);
    } else if (st.type === 7 && (st.value.length === 8 || st.value.length === 32)) {
      const addr = st.value.slice(0, st.value.length / 2);
      const ip = ipFromBytes(addr);
      const parsed = ip === null ? null : parseName(ip);
      if (parsed !== null) ips.push(parsed.name);
    }
  }
  return { dns, ips };
}

/** Name constraints for a set of bump hosts (exact names, IPs and `*.` patterns). */
export function constraintsForHosts(hosts: readonly string[]): NameConstraintSet {
  const dns = new Set<string>();
  const ips = new Set<string>();
  for (const h of hosts) {
    const p = parseName(h);
    if (p === null) continue;
    if (p.kind === 'ip') ips.add(p.name);
    else dns.add(p.kind === 'wildcard' ? p.name.slice(2) : p.name);
  }
  // drop names already covered by a broader subtree
  const list = [...dns].filter((d) => ![...dns].some((o) => o !== d && d.endsWith(`.${o}`)));
  return { dns: list.sort(), ips: [...ips].sort() };
}

// ---------------------------------------------------------------------------------------------
// Store: files under the state directory, rotation and retirement.
// ---------------------------------------------------------------------------------------------

export interface CaStoreOptions {
  /** state directory for the CA, e.g. `<dataDir>/ca`; created 0700 */
  dir: string;
  /** deployment id, part of the CA subject; a state dir of another deployment is refused */
  deploymentId: string;
  logger: Logger;
  events?: EventSink;
  clock?: Clock;
  /** validity of each CA generation (default 1 year) */
  validityMs?: number;
  /** evaluated whenever a generation is created; null = no name constraints */
  nameConstraints?: () => NameConstraintSet | null;
}

interface StateFile {
  version: 1;
  deploymentId: string;
  current: number;
  retiring: { generation: number; overlapEndsAt: string } | null;
}

export interface RetiringCa {
  ca: CaGeneration;
  overlapEndsAt: Date;
}

const DEPLOYMENT_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const KEY_FILE = /^ca-(\d+)\.(key|cert)\.pem$/;

export const caKeyFile = (gen: number): string => `ca-${gen}.key.pem`;
export const caCertFile = (gen: number): string => `ca-${gen}.cert.pem`;
export const BUNDLE_FILE = 'bundle.pem';
export const STATE_FILE = 'state.json';

/**
 * The deployment CA on disk: `ca-<gen>.key.pem` (0600), `ca-<gen>.cert.pem`, `bundle.pem` (the
 * certificates of all active generations, for sandbox trust stores) and `state.json` (current
 * generation, retiring generation and end of overlap). `state.json` is written last and is the
 * commit point of every change.
 */
export class CaStore {
  #current: CaGeneration;
  #retiring: RetiringCa | null;
  #queue: Promise<unknown> = Promise.resolve();
  private readonly log: Logger;
  private readonly clock: Clock;

  private constructor(
    private readonly opts: CaStoreOptions,
    current: CaGeneration,
    retiring: RetiringCa | null,
  ) {
    this.#current = current;
    this.#retiring = retiring;
    this.log = opts.logger.child({ component: 'sds-minter' });
    this.clock = opts.clock ?? Date.now;
  }

  /** Load the CA from `dir`, or create generation 1 when the directory holds no CA at all. */
  static async open(opts: CaStoreOptions): Promise<CaStore> {
    if (!DEPLOYMENT_ID.test(opts.deploymentId)) {
      throw new TypeError('deploymentId must be 1-63 characters of [A-Za-z0-9._-]');
    }
    const log = opts.logger.child({ component: 'sds-minter' });
    const clock = opts.clock ?? Date.now;
    await ensurePrivateDir(opts.dir);
    const stateText = await readPublicFile(join(opts.dir, STATE_FILE));
    if (stateText === null) {
      const stray = (await readdir(opts.dir)).filter((f) => KEY_FILE.test(f));
      if (stray.length > 0) {
        throw new CaUnavailableError(
          `CA directory ${opts.dir} holds CA files (${stray.join(', ')}) but no ${STATE_FILE}; refusing to replace them`,
        );
      }
      const created = await createCaGeneration({
        generation: 1,
        deploymentId: opts.deploymentId,
        now: clock(),
        validityMs: opts.validityMs ?? DEFAULT_CA_VALIDITY_MS,
        nameConstraints: opts.nameConstraints?.() ?? null,
      });
      await created.ca.prepareLeafKey();
      const store = new CaStore(opts, created.ca, null);
      await store.writeGeneration(created);
      await store.writeBundleAndState();
      log.info({ ca: created.ca.info() }, 'deployment CA created');
      store.emit('ca.created', 'info', { ...created.ca.info(), reason: 'first start' });
      return store;
    }

    const state = parseState(stateText, opts.dir);
    if (state.deploymentId !== opts.deploymentId) {
      throw new CaUnavailableError(
        `CA directory ${opts.dir} belongs to deployment "${state.deploymentId}", not "${opts.deploymentId}"`,
      );
    }
    const current = await loadGeneration(opts.dir, state.current, true);
    await current.prepareLeafKey();
    let retiring: RetiringCa | null = null;
    if (state.retiring !== null) {
      try {
        const ca = await loadGeneration(opts.dir, state.retiring.generation, false);
        retiring = { ca, overlapEndsAt: new Date(state.retiring.overlapEndsAt) };
      } catch (e) {
        log.warn(
          { generation: state.retiring.generation, err: (e as Error).message },
          'retiring CA generation cannot be loaded; treating it as retired',
        );
      }
    }
    const store = new CaStore(opts, current, retiring);
    await store.writeBundleAndState();
    await store.removeStaleFiles();
    log.info({ ca: current.info(), retiring: retiring?.ca.generation ?? null }, 'deployment CA loaded');
    return store;
  }

  get current(): CaGeneration {
    return this.#current;
  }

  get retiring(): RetiringCa | null {
    return this.#retiring;
  }

  /** Generations whose certificates are in the trust bundle (current first). */
  active(): CaGeneration[] {
    return this.#retiring ? [this.#current, this.#retiring.ca] : [this.#current];
  }

  /** PEM trust bundle of the active generations, for sandbox trust stores. */
  bundlePem(): string {
    return this.active()
      .map((g) => g.certPem)
      .join('');
  }

  get dir(): string {
    return this.opts.dir;
  }

  /**
   * Start a rotation: create the next generation, which signs every leaf from now on, and keep the
   * current one in the bundle until `overlapMs` from now. A rotation already in progress is
   * finished (its retiring generation retired) first.
   */
  rotate(overlapMs: number, reason = 'requested'): Promise<CaGeneration> {
    return this.serialize(async () => {
      if (this.#retiring !== null) await this.retireNow('superseded by a new rotation');
      const old = this.#current;
      const now = this.clock();
      const created = await createCaGeneration({
        generation: old.generation + 1,
        deploymentId: this.opts.deploymentId,
        now,
        validityMs: this.opts.validityMs ?? DEFAULT_CA_VALIDITY_MS,
        nameConstraints: this.opts.nameConstraints?.() ?? null,
      });
      await created.ca.prepareLeafKey();
      await this.writeGeneration(created);
      const overlapEndsAt = new Date(now + Math.max(0, overlapMs));
      const prevCurrent = this.#current;
      const prevRetiring = this.#retiring;
      this.#current = created.ca;
      this.#retiring = { ca: old, overlapEndsAt };
      try {
        await this.writeBundleAndState();
      } catch (e) {
        this.#current = prevCurrent;
        this.#retiring = prevRetiring;
        throw e;
      }
      old.dropKeys();
      this.log.info(
        { from: old.generation, to: created.ca.generation, overlapEndsAt: overlapEndsAt.toISOString(), reason },
        'deployment CA rotated',
      );
      this.emit('ca.created', 'info', { ...created.ca.info(), reason: 'rotation' });
      this.emit('ca.rotated', 'info', {
        from: old.generation,
        to: created.ca.generation,
        fromFingerprint256: old.fingerprint256,
        toFingerprint256: created.ca.fingerprint256,
        overlapEndsAt: overlapEndsAt.toISOString(),
        reason,
      });
      return created.ca;
    });
  }

  /** End the overlap now: drop the retiring generation from the bundle and delete its key file. */
  retire(reason = 'overlap ended'): Promise<CaGeneration | null> {
    return this.serialize(() => this.retireNow(reason));
  }

  private async retireNow(reason: string): Promise<CaGeneration | null> {
    const r = this.#retiring;
    if (r === null) return null;
    this.#retiring = null;
    try {
      await this.writeBundleAndState();
    } catch (e) {
      this.#retiring = r;
      throw e;
    }
    await rm(join(this.opts.dir, caKeyFile(r.ca.generation)), { force: true });
    await rm(join(this.opts.dir, caCertFile(r.ca.generation)), { force: true });
    this.log.info({ generation: r.ca.generation, reason }, 'deployment CA generation retired');
    this.emit('ca.retired', 'info', {
      generation: r.ca.generation,
      fingerprint256: r.ca.fingerprint256,
      current: this.#current.generation,
      reason,
    });
    return r.ca;
  }

  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  private async writeGeneration(created: CreatedCa): Promise<void> {
    const gen = created.ca.generation;
    try {
      await writeFileAtomic(join(this.opts.dir, caKeyFile(gen)), created.keyPem, 0o600);
      await writeFileAtomic(join(this.opts.dir, caCertFile(gen)), created.ca.certPem, 0o644);
    } catch (e) {
      throw new CaUnavailableError(`cannot write CA generation ${gen} to ${this.opts.dir}`, { cause: e });
    }
  }

  private async writeBundleAndState(): Promise<void> {
    const state: StateFile = {
      version: 1,
      deploymentId: this.opts.deploymentId,
      current: this.#current.generation,
      retiring: this.#retiring
        ? { generation: this.#retiring.ca.generation, overlapEndsAt: this.#retiring.overlapEndsAt.toISOString() }
        : null,
    };
    try {
      const bundlePath = join(this.opts.dir, BUNDLE_FILE);
      if ((await readPublicFile(bundlePath)) !== this.bundlePem()) {
        await writeFileAtomic(bundlePath, this.bundlePem(), 0o644);
      }
      const statePath = join(this.opts.dir, STATE_FILE);
      const text = `${JSON.stringify(state, null, 2)}\n`;
      if ((await readPublicFile(statePath)) !== text) await writeFileAtomic(statePath, text, 0o644);
    } catch (e) {
      if (e instanceof CaUnavailableError) throw e;
      throw new CaUnavailableError(`cannot write CA state in ${this.opts.dir}`, { cause: e });
    }
  }

  /** Key and certificate files of older generations left by an interrupted retirement. */
  private async removeStaleFiles(): Promise<void> {
    const keep = new Set(this.active().map((g) => g.generation));
    for (const f of await readdir(this.opts.dir)) {
      const m = KEY_FILE.exec(f);
      if (!m) continue;
      const gen = Number(m[1]);
      if (gen < this.#current.generation && !keep.has(gen)) {
        await rm(join(this.opts.dir, f), { force: true });
        this.log.info({ generation: gen, file: f }, 'removed file of a retired CA generation');
      }
    }
  }

  private emit(type: string, severity: 'info' | 'warning', data: Record<string, unknown>): void {
    this.opts.events?.emit({ type, severity, source: 'sds-minter', time: new Date(this.clock()).toISOString(), data });
  }

  toJSON(): unknown {
    return {
      dir: this.opts.dir,
      current: this.#current.info(),
      retiring: this.#retiring
        ? { ...this.#retiring.ca.info(), overlapEndsAt: this.#retiring.overlapEndsAt.toISOString() }
        : null,
    };
  }

  [inspect.custom](): string {
    return `CaStore ${inspect(this.toJSON(), { depth: 4 })}`;
  }
}

async function loadGeneration(dir: string, gen: number, withKey: boolean): Promise<CaGeneration> {
  const certPem = await readPublicFile(join(dir, caCertFile(gen)));
  if (certPem === null) throw new CaUnavailableError(`CA certificate file ${join(dir, caCertFile(gen))} is missing`);
  let key: KeyObject | null = null;
  if (withKey) {
    const keyPem = await readPrivateFile(join(dir, caKeyFile(gen)));
    try {
      key = createPrivateKey(keyPem);
    } catch {
      // the parser's message could quote key bytes: do not chain it
      throw new CaUnavailableError(`CA key file ${join(dir, caKeyFile(gen))} does not hold a usable private key`);
    }
    if (key.asymmetricKeyType !== 'rsa') {
      throw new CaUnavailableError(`CA key file ${join(dir, caKeyFile(gen))} is not an RSA key`);
    }
  }
  return CaGeneration.fromParts(gen, certPem, key);
}

function parseState(text: string, dir: string): StateFile {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new CaUnavailableError(`${join(dir, STATE_FILE)} is not valid JSON`);
  }
  const s = v as Partial<StateFile>;
  const okGen = (n: unknown): n is number => typeof n === 'number' && Number.isInteger(n) && n >= 1;
  const okRetiring =
    s.retiring === null ||
    (typeof s.retiring === 'object' &&
      s.retiring !== undefined &&
      okGen(s.retiring.generation) &&
      typeof s.retiring.overlapEndsAt === 'string' &&
      !Number.isNaN(Date.parse(s.retiring.overlapEndsAt)));
  if (s.version !== 1 || typeof s.deploymentId !== 'string' || !okGen(s.current) || !okRetiring) {
    throw new CaUnavailableError(`${join(dir, STATE_FILE)} is not a valid CA state file`);
  }
  return s as StateFile;
}
