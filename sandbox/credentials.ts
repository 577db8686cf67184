import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, jwtVerify, SignJWT, decodeProtectedHeader, errors as joseErrors, type JWK } from 'jose';
import type { EventSink } from '../common/events.js';
import { PortcullisError } from '../common/errors.js';

/**
 * Session credentials (NFR-SEC-10/11): an Ed25519-signed JWT per session, bound to the session and to
 * the container it runs in, `exp` ≤ 60 min, re-issued before expiry while the session lives (rotation,
 * not extension). The signing keys rotate on a schedule (≤ 90 d); a retired key keeps verifying for an
 * overlap window so tokens it signed stay valid until they expire.
 *
 * The token is the only credential a sandbox holds; it proves session identity to the egress edge
 * (Envoy's jwt_authn verifies it with the ring's JWKS, pushed over xDS; `verify` checks the same).
 *
 * Because the edge verifies with the JWKS it last received, a key is published before anything is
 * signed with it: the ring always holds a staged "next" key, in the JWKS but never signing, which the
 * following rotation promotes. `onChange` tells the publisher whenever the JWKS changes.
 */

export const SESSION_TOKEN_ISSUER = 'portcullis-supervisor';
export const SESSION_TOKEN_AUDIENCE = 'portcullis-egress';
const ALG = 'EdDSA';

export interface SessionClaims {
  /** session id */
  sid: string;
  /** container id (full Docker id) the session runs in */
  cid: string;
  jti: string;
  iat: number;
  exp: number;
  iss: string;
  aud: string;
  sub: string;
}

interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicJwk: JWK;
  createdAt: number;
  /** When it became the signing key (unset while staged as next). */
  activatedAt?: number;
  /** Set when a newer key took over: verification stops at retiredAt + overlap. */
  retiredAt?: number;
}

export interface KeyRingOptions {
  rotateEveryMs: number;
  overlapMs: number;
  now?: () => number;
  events?: EventSink;
}

/** The auto-rotation timer wakes at least this often, and at most this often when a deadline passed. */
const MAX_TICK_MS = 3_600_000;
const MIN_TICK_MS = 1_000;

/**
 * Signing keys: retired keys (still verifying for `overlapMs`), the current (signing) key, and a staged
 * next key. The JWKS holds all of them, oldest first, next last, so the key a rotation promotes has been
 * published for a whole rotation period before it signs anything.
 */
export class SigningKeyRing {
  /** retired keys within their overlap, oldest first, then the current key (last) */
  private readonly keys: SigningKey[] = [];
  /** published, never signs; the next rotation makes it current */
  private next: SigningKey | undefined;
  private readonly listeners = new Set<() => void>();
  private timer: NodeJS.Timeout | undefined;
  private autoRotating = false;
  private scheduledRotation: Promise<unknown> | undefined;
  private readonly now: () => number;

  private constructor(private readonly opts: KeyRingOptions) {
    this.now = opts.now ?? Date.now;
  }

  static async create(opts: KeyRingOptions): Promise<SigningKeyRing> {
    if (opts.rotateEveryMs > 90 * 24 * 3600 * 1000) throw new RangeError('signing keys rotate at least every 90 days (NFR-SEC-11)');
    const ring = new SigningKeyRing(opts);
    await ring.rotate('initial');
    return ring;
  }

  /** The signing key (never the staged next key). */
  current(): { kid: string; privateKey: KeyObject } {
    const k = this.keys.at(-1);
    if (!k) throw new PortcullisError('credential_unavailable', 'no signing key');
    return { kid: k.kid, privateKey: k.privateKey };
  }

  /** The staged key the next rotation promotes: published in the JWKS, not signing yet. */
  nextKid(): string {
    if (!this.next) throw new PortcullisError('credential_unavailable', 'no signing key');
    return this.next.kid;
  }

  /**
   * Promotes the staged next key (published since the previous rotation) to current, retires the
   * previous current (it verifies for `overlapMs` more) and stages a fresh next key. The first call
   * (from `create`) makes both a current and a next key. Returns the new current kid.
   */
  async rotate(reason = 'scheduled'): Promise<string> {
    const fresh = await this.generate();
    const spare = this.next ? undefined : await this.generate();
    // From here on synchronous: concurrent rotations each apply whole.
    const promoted = this.next ?? spare!;
    const now = this.now();
    const prev = this.keys.at(-1);
    if (prev) prev.retiredAt = now;
    promoted.activatedAt = now;
    this.keys.push(promoted);
    this.next = fresh;
    this.prune();
    this.opts.events?.emit({
      type: 'session.signing_key_rotated',
      severity: 'info',
      source: 'supervisor',
      data: { kid: promoted.kid, previousKid: prev?.kid ?? null, nextKid: fresh.kid, reason },
    });
    this.notify();
    this.schedule();
    return promoted.kid;
  }

  /**
   * The public key for `kid` if it may verify: a key of `jwks()` (retired within the overlap, current,
   * or the staged next key — nothing is signed with the latter, and the edge accepts it too).
   */
  verificationKey(kid: string): KeyObject | undefined {
    this.pruneAndNotify();
    return this.published().find((k) => k.kid === kid)?.publicKey;
  }

  /** Public keys that verify now (retired within the overlap, current, staged next), as a JWKS. */
  jwks(): { keys: JWK[] } {
    this.pruneAndNotify();
    return { keys: this.published().map((k) => ({ ...k.publicJwk })) };
  }

  /** The kids of `jwks()`, in its order: retired, current, then the staged next key (last). */
  kids(): string[] {
    this.pruneAndNotify();
    return this.published().map((k) => k.kid);
  }

  /**
   * Calls `listener` whenever the set of keys in `jwks()` changes: at each rotation, and when a retired
   * key leaves after its overlap (noticed by the auto-rotation timer, or lazily by jwks() and co.).
   * Listeners run synchronously, possibly from inside jwks()/verificationKey()/kids(): they should
   * schedule work, not block. Their exceptions are swallowed. Returns the unsubscribe function.
   */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /**
   * Rotates when the current key has signed for `rotateEveryMs` and drops retired keys when their
   * overlap ends, on a timer woken by the nearest of these deadlines (at least hourly).
   */
  startAutoRotation(): void {
    if (this.autoRotating) return;
    this.autoRotating = true;
    this.schedule();
  }

  stop(): void {
    this.autoRotating = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private tick(): void {
    this.timer = undefined;
    if (!this.autoRotating) return;
    const cur = this.keys.at(-1);
    if (cur && !this.scheduledRotation && this.now() - (cur.activatedAt ?? cur.createdAt) >= this.opts.rotateEveryMs) {
      this.scheduledRotation = this.rotate('scheduled').finally(() => {
        this.scheduledRotation = undefined;
      });
    }
    this.pruneAndNotify();
    this.schedule();
  }

  /** (Re)arms the timer for the nearest deadline: rotation due, or a retired key's overlap ending. */
  private schedule(): void {
    if (!this.autoRotating) return;
    if (this.timer) clearTimeout(this.timer);
    const now = this.now();
    let at = now + MAX_TICK_MS;
    const cur = this.keys.at(-1);
    if (cur) at = Math.min(at, (cur.activatedAt ?? cur.createdAt) + this.opts.rotateEveryMs);
    for (const k of this.keys) if (k.retiredAt !== undefined) at = Math.min(at, k.retiredAt + this.opts.overlapMs + 1);
    this.timer = setTimeout(() => this.tick(), Math.min(MAX_TICK_MS, Math.max(MIN_TICK_MS, at - now)));
    this.timer.unref();
  }

  private published(): SigningKey[] {
    return this.next ? [...this.keys, this.next] : [...this.keys];
  }

  private async generate(): Promise<SigningKey> {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const jwk = await exportJWK(publicKey);
    const kid = await calculateJwkThumbprint(jwk, 'sha256');
    return { kid, privateKey, publicKey, publicJwk: { ...jwk, kid, alg: ALG, use: 'sig' }, createdAt: this.now() };
  }

  private notify(): void {
    for (const l of [...this.listeners]) {
      try {
        l();
      } catch {
        // a listener's failure is its own; the ring and the other listeners carry on
      }
    }
  }

  private pruneAndNotify(): void {
    if (this.prune()) this.notify();
  }

  /** Drops retired keys past their overlap; true when one went. The current key always stays. */
  private prune(): boolean {
    const now = this.now();
    let dropped = false;
    for (let i = this.keys.length - 2; i >= 0; i--) {
      const k = this.keys[i]!;
      if (k.retiredAt !== undefined && now - k.retiredAt > this.opts.overlapMs) {
        this.keys.splice(i, 1);
        dropped = true;
      }
    }
    return dropped;
  }
}

export interface IssuedCredential {
  token: string;
  jti: string;
  kid: string;
  issuedAt: number;
  expiresAt: number;
}

export class SessionCredentials {
  private readonly revoked = new Map<string, number>();
  private readonly now: () => number;

  constructor(
    private readonly ring: SigningKeyRing,
    private readonly opts: { ttlSeconds: number; now?: () => number },
  ) {
    if (!(opts.ttlSeconds > 0 && opts.ttlSeconds <= 3600)) throw new RangeError('session token TTL must be within (0, 3600] seconds (NFR-SEC-10)');
    this.now = opts.now ?? Date.now;
  }

  get ttlSeconds(): number {
    return this.opts.ttlSeconds;
  }

  /** A policy reload: tokens minted from now on get the new TTL. */
  setTtlSeconds(ttl: number): void {
    if (!(ttl > 0 && ttl <= 3600)) throw new RangeError('session token TTL must be within (0, 3600] seconds (NFR-SEC-10)');
    this.opts.ttlSeconds = ttl;
  }

  async mint(sessionId: string, containerId: string): Promise<IssuedCredential> {
    if (this.revoked.has(sessionId)) throw new PortcullisError('session_revoked', 'session is revoked; no new credential');
    const { kid, privateKey } = this.ring.current();
    const iat = Math.floor(this.now() / 1000);
    const exp = iat + this.opts.ttlSeconds;
    const jti = randomBytes(16).toString('base64url');
    const token = await new SignJWT({ sid: sessionId, cid: containerId })
      .setProtectedHeader({ alg: ALG, kid, typ: 'JWT' })
      .setIssuer(SESSION_TOKEN_ISSUER)
      .setAudience(SESSION_TOKEN_AUDIENCE)
      .setSubject(sessionId)
      .setJti(jti)
      .setIssuedAt(iat)
      .setExpirationTime(exp)
      .sign(privateKey);
    return { token, jti, kid, issuedAt: iat * 1000, expiresAt: exp * 1000 };
  }

  /**
   * Verifies a presented token: signature by a key of the ring (by `kid`), issuer, audience, expiry,
   * binding, and revocation. Failures carry the stable deny reasons.
   */
  async verify(token: string | undefined | null, expect: { sessionId?: string; containerId?: string } = {}): Promise<SessionClaims> {
    if (!token) throw new PortcullisError('session_credential_missing', 'no session credential presented');
    let kid: string | undefined;
    try {
      kid = decodeProtectedHeader(token).kid;
    } catch {
      throw new PortcullisError('session_credential_missing', 'malformed session credential');
    }
    const key = kid === undefined ? undefined : this.ring.verificationKey(kid);
    if (!key) throw new PortcullisError('session_credential_missing', 'session credential signed by an unknown or retired key');
    let payload: Record<string, unknown>;
    try {
      ({ payload } = await jwtVerify(token, key, {
        issuer: SESSION_TOKEN_ISSUER,
        audience: SESSION_TOKEN_AUDIENCE,
        algorithms: [ALG],
        currentDate: new Date(this.now()),
        requiredClaims: ['exp', 'iat', 'jti', 'sub'],
      }));
    } catch (e) {
      if (e instanceof joseErrors.JWTExpired) throw new PortcullisError('session_expired', 'session credential expired');
      throw new PortcullisError('session_credential_missing', 'invalid session credential', { cause: e });
    }
    const claims = payload as unknown as SessionClaims;
    if (typeof claims.sid !== 'string' || typeof claims.cid !== 'string' || claims.sub !== claims.sid) {
      throw new PortcullisError('session_credential_missing', 'session credential without binding claims');
    }
    if (claims.exp - claims.iat > 3600) throw new PortcullisError('session_credential_missing', 'session credential lifetime above 60 min');
    if (this.revoked.has(claims.sid)) throw new PortcullisError('session_revoked', 'session revoked');
    if (expect.sessionId !== undefined && claims.sid !== expect.sessionId) throw new PortcullisError('session_credential_missing', 'credential bound to another session');
    if (expect.containerId !== undefined && claims.cid !== expect.containerId) throw new PortcullisError('session_credential_missing', 'credential bound to another container');
    return claims;
  }

  /** Every token of the session stops verifying now; no new one is minted. */
  revoke(sessionId: string): void {
    this.revoked.set(sessionId, this.now());
    this.pruneRevoked();
  }

  isRevoked(sessionId: string): boolean {
    return this.revoked.has(sessionId);
  }

  /** A revocation entry outlives every token it could concern (TTL), then goes. */
  private pruneRevoked(): void {
    const horizon = this.now() - this.opts.ttlSeconds * 1000 - 60_000;
    for (const [sid, at] of this.revoked) if (at < horizon) this.revoked.delete(sid);
  }
}

/**
 * When to re-issue a token: at 75 % of its lifetime, at least 10 s before expiry, but never before half
 * of its lifetime (short test TTLs must not spin).
 */
export function rotationDelayMs(issuedAt: number, expiresAt: number, now: number): number {
  const life = expiresAt - issuedAt;
  const at = Math.max(issuedAt + life * 0.5, Math.min(issuedAt + life * 0.75, expiresAt - 10_000));
  return Math.max(0, at - now);
}
