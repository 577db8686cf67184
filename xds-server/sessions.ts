import type { JSONWebKeySet } from 'jose';
import type { SessionVerifier } from './translate/session-check.js';

/**
 * Session credentials at the egress edge. A sandbox's proxy URL carries its session token (a JWT
 * signed by the supervisor's session key, `sid` = the session). Envoy checks it on every tunnel
 * itself (translate/session-check.ts): signature and claims with the signer's JWKS (`verifier()`),
 * expiry by Envoy's clock (at the tunnel, and at every request inside a bumped tunnel). What only
 * the control plane knows is which sessions are revoked: `denials()` becomes RBAC policies on the
 * egress route table (the next tunnel) and deny routes on the bump listener (the next request inside
 * an open tunnel), published again on every change (`onChange`), so no tunnel and no request waits
 * on a call to the control plane.
 */

/** Why a session can be revoked; the denial of its next tunnel or request carries it. */
export const REVOCATION_REASONS = ['session_revoked', 'exfil_budget_exceeded'] as const;
export type RevocationReason = (typeof REVOCATION_REASONS)[number];

export interface SessionAuthority {
  /** How Envoy verifies every tunnel's token: the signer's public keys and the claims required. */
  verifier(): SessionVerifier;
  /**
   * Sessions Envoy must refuse (revoked), for as long as a tunnel opened before could still be open.
   * The translator turns them into RBAC policies and deny routes; `onChange` tells the control plane
   * to publish them again (and the keys, when the signer's JWKS changed).
   */
  denials?(): SessionDenialEntry[];
  onChange?(listener: () => void): () => void;
  /** Refuse the session from now on. */
  revoke?(sessionId: string, reason?: RevocationReason): void;
}

export interface SessionDenialEntry {
  sessionId: string;
  reason: RevocationReason;
}

export const SESSION_AUDIENCE = 'portcullis-egress';

/** A tunnel lives at most this long by default (EgressOptions.maxTunnelSeconds). */
export const DEFAULT_DENIAL_RETENTION_MS = 3600_000 + 60_000;

export interface JwtSessionOptions {
  /** public keys of the session signer (current, staged next, and retired ones in their overlap) */
  jwks: () => JSONWebKeySet;
  /** tells when `jwks()` changed (the signer rotated or dropped a key): the keys are published again */
  onKeysChange?: (listener: () => void) => () => void;
  issuer?: string;
  audience?: string;
  now?: () => number;
  /**
   * How long a revoked session stays in `denials()`: the longest a tunnel opened before can still
   * be open (the egress listener's `maxTunnelSeconds`, plus a margin). Default 61 min. Its tokens
   * stay refused after that too: they expire within the hour the signer gives them.
   */
  retainMs?: number;
}

/** Node's timers hold at most 2^31-1 ms; later instants are checked again on the way. */
const MAX_TIMER_MS = 2_147_000_000;

export class JwtSessions implements SessionAuthority {
  private readonly revoked = new Map<string, { reason: RevocationReason; at: number }>();
  private readonly listeners = new Set<() => void>();
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private unwatchKeys: (() => void) | undefined;
  constructor(private readonly o: JwtSessionOptions) {}

  verifier(): SessionVerifier {
    return { jwks: this.o.jwks(), audience: this.o.audience ?? SESSION_AUDIENCE, ...(this.o.issuer ? { issuer: this.o.issuer } : {}) };
  }

  private now(): number {
    return this.o.now?.() ?? Date.now();
  }

  private get retainMs(): number {
    return this.o.retainMs ?? DEFAULT_DENIAL_RETENTION_MS;
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
    return out.sort((a, b) => (a.sessionId < b.sessionId ? -1 : a.sessionId > b.sessionId ? 1 : 0));
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    this.unwatchKeys ??= this.o.onKeysChange?.(() => this.changed());
    this.schedule();
    return () => {
      this.listeners.delete(listener);
      if (!this.listeners.size) this.stop();
    };
  }

  /** Stop the retention timer and the key watch (revocations are still recorded). */
  close(): void {
    this.listeners.clear();
    this.stop();
  }

  private stop(): void {
    this.clearTimer();
    this.unwatchKeys?.();
    this.unwatchKeys = undefined;
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

  /** One timer, at the next instant `denials()` changes by itself: an entry leaving after its retention. */
  private schedule(): void {
    if (!this.listeners.size) return;
    const now = this.now();
    let next = Infinity;
    // (a revoked session stays in `revoked` for good; only its entry in `denials()` ends)
    for (const r of this.revoked.values()) {
      const end = r.at + this.retainMs;
      if (end > now) next = Math.min(next, end);
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
