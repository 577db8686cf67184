import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from 'jose';

/**
 * Session credentials at the egress edge. A sandbox's proxy URL carries its session token (a JWT
 * signed by the supervisor's session key, `sid` = the session); the tunnel check verifies it, the
 * per-request check inside a bumped tunnel asks whether the session is still good. Revocation
 * (kill switch, quarantine, teardown) takes effect at the next request.
 */

export type SessionDenial = 'session_credential_missing' | 'session_expired' | 'session_revoked' | 'exfil_budget_exceeded';
/** Why a session was revoked; the denial of its next request carries it. */
export type RevocationReason = 'session_revoked' | 'exfil_budget_exceeded';
export type SessionCheck = { ok: true; sessionId: string } | { ok: false; reason: SessionDenial };

export interface SessionAuthority {
  /** A tunnel's token (from Proxy-Authorization). */
  verifyToken(token: string | undefined): Promise<SessionCheck>;
  /** A session already admitted at CONNECT: still valid? */
  checkSession(sessionId: string | undefined): SessionCheck;
}

export const SESSION_AUDIENCE = 'portcullis-egress';

export interface JwtSessionOptions {
  /** public keys of the session signer (several during a key rotation overlap) */
  jwks: () => JSONWebKeySet;
  issuer?: string;
  audience?: string;
  clockToleranceSec?: number;
  now?: () => number;
}

export class JwtSessions implements SessionAuthority {
  private readonly revoked = new Map<string, RevocationReason>();
  private readonly expiry = new Map<string, number>();
  constructor(private readonly o: JwtSessionOptions) {}

  async verifyToken(token: string | undefined): Promise<SessionCheck> {
    if (!token) return { ok: false, reason: 'session_credential_missing' };
    try {
      const { payload } = await jwtVerify(token, createLocalJWKSet(this.o.jwks()), {
        audience: this.o.audience ?? SESSION_AUDIENCE,
        ...(this.o.issuer ? { issuer: this.o.issuer } : {}),
        algorithms: ['EdDSA'],
        clockTolerance: this.o.clockToleranceSec ?? 5,
        ...(this.o.now ? { currentDate: new Date(this.o.now()) } : {}),
      });
      const sid = typeof payload.sid === 'string' ? payload.sid : undefined;
      if (!sid) return { ok: false, reason: 'session_credential_missing' };
      const revoked = this.revoked.get(sid);
      if (revoked) return { ok: false, reason: revoked };
      if (payload.exp) this.expiry.set(sid, Math.max(this.expiry.get(sid) ?? 0, payload.exp * 1000));
      return { ok: true, sessionId: sid };
    } catch (e) {
      const code = (e as { code?: string }).code;
      return { ok: false, reason: code === 'ERR_JWT_EXPIRED' ? 'session_expired' : 'session_credential_missing' };
    }
  }

  checkSession(sessionId: string | undefined): SessionCheck {
    if (!sessionId) return { ok: false, reason: 'session_credential_missing' };
    const revoked = this.revoked.get(sessionId);
    if (revoked) return { ok: false, reason: revoked };
    const exp = this.expiry.get(sessionId);
    if (exp === undefined) return { ok: false, reason: 'session_credential_missing' };
    if (exp + (this.o.clockToleranceSec ?? 5) * 1000 < (this.o.now?.() ?? Date.now())) return { ok: false, reason: 'session_expired' };
    return { ok: true, sessionId };
  }

  /** Refuse the session from now on; a later revocation of the same session keeps the first reason. */
  revoke(sessionId: string, reason: RevocationReason = 'session_revoked'): void {
    if (!this.revoked.has(sessionId)) this.revoked.set(sessionId, reason);
  }

  revocationReason(sessionId: string): RevocationReason | undefined {
    return this.revoked.get(sessionId);
  }

  isRevoked(sessionId: string): boolean {
    return this.revoked.has(sessionId);
  }
}
