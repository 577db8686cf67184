import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from 'jose';
import { setBounded } from '../common/bounded.js';

/**
 * Session credentials at the egress edge. A sandbox's proxy URL carries its session token (a JWT
 * signed by the supervisor's session key, `sid` = the session); the tunnel check (ext_authz on every
 * CONNECT) verifies it. Inside a bumped tunnel that is already open, Envoy itself refuses the
 * session's next request once it is revoked or expired: `denials()` becomes deny routes on the bump
 * listener, published again on every change (`onChange`), so no request waits on a call to the
 * control plane. Revocation (kill switch, quarantine, teardown) takes effect at the next tunnel
 * at once, and at the next request inside an open tunnel as soon as Envoy has the routes.
 */

export type SessionDenial = 'session_credential_missing' | 'session_expired' | 'session_revoked' | 'exfil_budget_exceeded';
/** Why a session was revoked; the denial of its next request carries it. */
export type RevocationReason = 'session_revoked' | 'exfil_budget_exceeded';
export type SessionCheck = { ok: true; sessionId: string } | { ok: false; reason: SessionDenial };

export interface SessionAuthority {
  /** A tunnel's token (from Proxy-Authorization). */
  verifyToken(token: string | undefined): Promise<SessionCheck>;
  /**
   * Sessions Envoy must refuse inside tunnels that are already open (revoked or expired), for as long
   * as a tunnel opened before could still be open. The translator turns them into deny routes on the
   * bump listener; `onChange` tells the control plane to publish them again.
   */
  denials?(): SessionDenialEntry[];
  onChange?(listener: () => void): () => void;
  /** Refuse the session from now on. */
  revoke?(sessionId: string, reason?: RevocationReason): void;
}

export interface SessionDenialEntry {
  sessionId: string;
  reason: SessionDenial;
}

export const SESSION_AUDIENCE = 'portcullis-egress';

/** A tunnel lives at most this long by default (EgressOptions.maxTunnelSeconds). */
export const DEFAULT_DENIAL_RETENTION_MS = 3600_000 + 60_000;

export interface JwtSessionOptions {
  /** public keys of the session signer (several during a key rotation overlap) */
  jwks: () => JSONWebKeySet;
  issuer?: string;
  audience?: string;
  clockToleranceSec?: number;
  now?: () => number;
  /**
   * How long a revoked or expired session stays in `denials()`: the longest a tunnel opened before
   * can still be open (the egress listener's `maxTunnelSeconds`, plus a margin). Default 61 min.
   */
  retainMs?: number;
}

/** Verified tokens remembered (oldest forgotten first). */
const MAX_VERIFIED = 4096;

/** Node's timers hold at most 2^31-1 ms; later instants are checked again on the way. */
const MAX_TIMER_MS = 2_147_000_000;

export class JwtSessions implements SessionAuthority {
  private readonly revoked = new Map<string, { reason: RevocationReason; at: number }>();
  private readonly expiry = new Map<string, number>();
  private readonly listeners = new Set<() => void>();
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  /** The signer's keys as last imported, and tokens already verified with them (bounded). */
  private keys: { fingerprint: string; set: ReturnType<typeof createLocalJWKSet> } | undefined;
  private readonly verified = new Map<string, { sid: string; expMs: number | undefined }>();
  constructor(private readonly o: JwtSessionOptions) {}

  /** The key set, imported again only when the signer's JWKS changed (a changed set forgets every verified token). */
  private keySet(): ReturnType<typeof createLocalJWKSet> {
    const jwks = this.o.jwks();
    const fingerprint = JSON.stringify(jwks);
    if (this.keys?.fingerprint !== fingerprint) {
      this.keys = { fingerprint, set: createLocalJWKSet(jwks) };
      this.verified.clear();
    }
    return this.keys.set;
  }

  private now(): number {
    return this.o.now?.() ?? Date.now();
  }

  private get toleranceMs(): number {
    return (this.o.clockToleranceSec ?? 5) * 1000;
  }

  private get retainMs(): number {
    return this.o.retainMs ?? DEFAULT_DENIAL_RETENTION_MS;
  }

  /**
   * A tunnel's token: signature, audience, issuer and expiry are checked once per token and
   * remembered (up to MAX_VERIFIED tokens, while the signer's keys stay the same); revocation and
   * expiry are checked again on every call.
   */
  async verifyToken(token: string | undefined): Promise<SessionCheck> {
    if (!token) return { ok: false, reason: 'session_credential_missing' };
    const keys = this.keySet();
    const known = this.verified.get(token);
    if (known) {
      const revoked = this.revoked.get(known.sid);
      if (revoked) return { ok: false, reason: revoked.reason };
      if (known.expMs !== undefined && this.isExpired(known.expMs, this.now())) {
        this.verified.delete(token);
        return { ok: false, reason: 'session_expired' };
      }
      return { ok: true, sessionId: known.sid };
    }
    try {
      const { payload } = await jwtVerify(token, keys, {
        audience: this.o.audience ?? SESSION_AUDIENCE,
        ...(this.o.issuer ? { issuer: this.o.issuer } : {}),
        algorithms: ['EdDSA'],
        clockTolerance: this.o.clockToleranceSec ?? 5,
        ...(this.o.now ? { currentDate: new Date(this.o.now()) } : {}),
      });
      const sid = typeof payload.sid === 'string' ? payload.sid : undefined;
      if (!sid) return { ok: false, reason: 'session_credential_missing' };
      const revoked = this.revoked.get(sid);
      if (revoked) return { ok: false, reason: revoked.reason };
      if (payload.exp) this.extend(sid, payload.exp * 1000);
      setBounded(this.verified, token, { sid, expMs: payload.exp ? payload.exp * 1000 : undefined }, MAX_VERIFIED);
      return { ok: true, sessionId: sid };
    } catch (e) {
      const code = (e as { code?: string }).code;
      return { ok: false, reason: code === 'ERR_JWT_EXPIRED' ? 'session_expired' : 'session_credential_missing' };
    }
  }

  /** Refuse the session from now on; a later revocation of the same session keeps the first reason. */
  revoke(sessionId: string, reason: RevocationReason = 'session_revoked'): void {
    if (this.revoked.has(sessionId)) return;
    this.revoked.set(sessionId, { reason, at: this.now() });
    this.changed();
  }

  revocationReason(sessionId: string): RevocationReason | undefined {
    return this.revoked.get(sessionId)?.reason;
  }

  isRevoked(sessionId: string): boolean {
    return this.revoked.has(sessionId);
  }

  denials(): SessionDenialEntry[] {
    const now = this.now();
    const out: SessionDenialEntry[] = [];
    for (const [sessionId, r] of this.revoked) if (now < r.at + this.retainMs) out.push({ sessionId, reason: r.reason });
    for (const [sessionId, exp] of this.expiry) {
      if (this.revoked.has(sessionId) || !this.isExpired(exp, now)) continue;
      if (now < exp + this.toleranceMs + this.retainMs) out.push({ sessionId, reason: 'session_expired' });
    }
    return out.sort((a, b) => (a.sessionId < b.sessionId ? -1 : a.sessionId > b.sessionId ? 1 : 0));
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    this.schedule();
    return () => {
      this.listeners.delete(listener);
      if (!this.listeners.size) this.clearTimer();
    };
  }

  /** Stop the expiry timer (the authority keeps answering checks). */
  close(): void {
    this.listeners.clear();
    this.clearTimer();
  }

  private isExpired(exp: number, now: number): boolean {
    return exp + this.toleranceMs < now;
  }

  /** A token of the session with a later expiry: the session lives on (and leaves `denials()`). */
  private extend(sid: string, expMs: number): void {
    const prev = this.expiry.get(sid);
    if (prev !== undefined && prev >= expMs) return;
    this.expiry.set(sid, expMs);
    const now = this.now();
    if (prev !== undefined && this.isExpired(prev, now) && !this.isExpired(expMs, now)) this.changed();
    else this.schedule();
  }

  private changed(): void {
    this.schedule();
    for (const l of [...this.listeners]) {
      try {
        l();
      } catch {
        // a listener's failure is its own (the control plane logs and counts it)
      }
    }
  }

  /**
   * One timer, at the next instant `denials()` changes by itself: a session expiring, or an entry
   * leaving after its retention. Entries past retention are dropped from memory on the way.
   */
  private schedule(): void {
    if (!this.listeners.size) return;
    const now = this.now();
    let next = Infinity;
    // (a revoked session stays in `revoked` for good: its tokens never verify again; only its
    // entry in `denials()` ends)
    for (const r of this.revoked.values()) {
      const end = r.at + this.retainMs;
      if (end > now) next = Math.min(next, end);
    }
    for (const [sid, exp] of this.expiry) {
      const expiresAt = exp + this.toleranceMs;
      const end = expiresAt + this.retainMs;
      if (end <= now) {
        this.expiry.delete(sid);
        continue;
      }
      // not expired yet (by the same test as `denials()`): wake just after it is; a timer may fire a
      // little early by the wall clock, and then it is armed again for what is left
      next = Math.min(next, this.isExpired(exp, now) ? end : expiresAt + 1);
    }
    if (next === this.timerAt && this.timer) return;
    this.clearTimer();
    if (next === Infinity) return;
    this.timerAt = next;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.timerAt = Infinity;
      this.changed();
    }, Math.min(MAX_TIMER_MS, Math.max(0, next - now)));
    this.timer.unref();
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = Infinity;
  }
}
