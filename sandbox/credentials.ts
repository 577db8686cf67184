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
 * (ext_authz in the control plane verifies it with `verify` or with the JWKS).
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
  /** Set when a newer key took over: verification stops at retiredAt + overlap. */
  retiredAt?: number;
}

export interface KeyRingOptions {
  rotateEveryMs: number;
  overlapMs: number;
  now?: () => number;
  events?: EventSink;
}

export class SigningKeyRing {
  private readonly keys: SigningKey[] = [];
  private timer: NodeJS.Timeout | undefined;
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

  current(): { kid: string; privateKey: KeyObject } {
    const k = this.keys.at(-1);
    if (!k) throw new PortcullisError('credential_unavailable', 'no signing key');
    return { kid: k.kid, privateKey: k.privateKey };
  }

  /** A new current key; the previous one verifies for `overlapMs` more. */
  async rotate(reason = 'scheduled'): Promise<string> {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const jwk = await exportJWK(publicKey);
    const kid = await calculateJwkThumbprint(jwk, 'sha256');
    const now = this.now();
    const prev = this.keys.at(-1);
    if (prev) prev.retiredAt = now;
    this.keys.push({ kid, privateKey, publicKey, publicJwk: { ...jwk, kid, alg: ALG, use: 'sig' }, createdAt: now });
    this.prune();
    this.opts.events?.emit({
      type: 'session.signing_key_rotated',
      severity: 'info',
      source: 'supervisor',
      data: { kid, previousKid: prev?.kid ?? null, reason },
    });
    return kid;
  }

  /** The public key for `kid` if it may still verify. */
  verificationKey(kid: string): KeyObject | undefined {
    this.prune();
    return this.keys.find((k) => k.kid === kid)?.publicKey;
  }

  /** Public keys that verify now (current + retired within the overlap), as a JWKS. */
  jwks(): { keys: JWK[] } {
    this.prune();
    return { keys: this.keys.map((k) => ({ ...k.publicJwk })) };
  }

  kids(): string[] {
    this.prune();
    return this.keys.map((k) => k.kid);
  }

  startAutoRotation(): void {
    if (this.timer) return;
    const tick = (): void => {
      const cur = this.keys.at(-1);
      if (cur && this.now() - cur.createdAt >= this.opts.rotateEveryMs) void this.rotate('scheduled');
      this.prune();
    };
    // Check often enough to rotate on time without depending on one long timer.
    this.timer = setInterval(tick, Math.min(this.opts.rotateEveryMs, 3_600_000));
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private prune(): void {
    const now = this.now();
    for (let i = this.keys.length - 2; i >= 0; i--) {
      const k = this.keys[i]!;
      if (k.retiredAt !== undefined && now - k.retiredAt > this.opts.overlapMs) this.keys.splice(i, 1);
    }
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
