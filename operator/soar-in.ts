import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { createLocalJWKSet, decodeProtectedHeader, errors as joseErrors, jwtVerify, type JSONWebKeySet, type JWTPayload } from 'jose';
import { z } from 'zod';
import { isPortcullisError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { Metrics } from '../common/metrics.js';
import { apiActivity, type EndpointInput } from '../audit/ocsf.js';
import type { AuditAppender } from '../audit/require-audit.js';
import { SOAR_ADMIN_DEFAULT_AUDIENCE } from '../policy/schema.js';
import { Journal } from './journal.js';
import type { KillSwitch } from './kill.js';

/**
 * The SOAR admin API (inbound): a SOAR platform asks Portcullis to quarantine, kill or revoke a
 * session with a request signed by one of ITS keys. The public halves and the audience come from
 * the policy (`soar.admin: { audience, keys: [{ name, jwksFile }] }`, loaded by
 * `loadSoarAdminKeys`); the operator plane swaps them live on a policy change. Without
 * `soar.admin` the endpoint answers 404.
 *
 * A request is a compact JWS (JWT), `alg` EdDSA or ES256, with claims
 *   iss  the SOAR client (recorded as the actor)          aud  the admin audience (required)
 *   iat  not in the future (clock skew allowance)         exp  after now, at most 5 min after iat
 *   jti  unique; replayed ones are refused               act  quarantine | kill | revoke
 *   sid  the session                                      why  optional note (≤ 512 chars)
 * Refusals carry a stable reason: malformed, unknown_key, signature_invalid, audience_invalid,
 * expired, issued_in_future, lifetime_too_long, claims_missing, replayed, request_invalid,
 * replay_cache_unavailable. Every call, accepted or refused, is audited; an accepted one runs
 * through the kill switch (fail closed: no audit record, no action).
 *
 * Replay cache: `soar-replay.jsonl` in the data dir. A jti is recorded and fsync'ed before its
 * action runs, and kept until its token's exp (plus the skew); on start the unexpired ones are
 * loaded, so a restart does not re-open the window.
 */

export const REPLAY_FILE = 'soar-replay.jsonl';
export const SOAR_ADMIN_AUDIENCE = SOAR_ADMIN_DEFAULT_AUDIENCE;
export const MAX_ADMIN_TOKEN_LIFETIME_SEC = 300;

export const ADMIN_REFUSALS = [
  'malformed',
  'unknown_key',
  'signature_invalid',
  'audience_invalid',
  'expired',
  'issued_in_future',
  'lifetime_too_long',
  'claims_missing',
  'replayed',
  'request_invalid',
  'replay_cache_unavailable',
] as const;
export type AdminRefusal = (typeof ADMIN_REFUSALS)[number];

export const AdminActionSchema = z.strictObject({
  act: z.enum(['quarantine', 'kill', 'revoke']),
  sid: z.string().min(1).max(256),
  why: z.string().max(512).optional(),
});
export type AdminAction = z.infer<typeof AdminActionSchema>;

// ---------------------------------------------------------------------------------------------
// Replay cache

interface ReplayRec {
  k: string;
  exp: number;
}

export class ReplayCache {
  private readonly seen = new Map<string, number>();

  private constructor(
    private readonly journal: Journal<ReplayRec> | null,
    private readonly now: () => number,
  ) {}

  /** `dataDir` omitted: in memory only. */
  static async open(dataDir: string | undefined, now: () => number = Date.now): Promise<ReplayCache> {
    if (!dataDir) return new ReplayCache(null, now);
    const { journal, records } = await Journal.open<ReplayRec>(join(dataDir, REPLAY_FILE));
    const c = new ReplayCache(journal, now);
    const t = now();
    for (const r of records) if (typeof r?.k === 'string' && typeof r.exp === 'number' && r.exp > t) c.seen.set(r.k, Math.max(r.exp, c.seen.get(r.k) ?? 0));
    if (records.length > c.seen.size) await journal.compact([...c.seen].map(([k, exp]) => ({ k, exp })));
    return c;
  }

  get size(): number {
    return this.seen.size;
  }

  /**
   * Record `key` until `expMs`. Resolves false if it is already there (a replay), true once the
   * record is durable; rejects if it cannot be made durable (the caller must refuse the request).
   */
  async claim(key: string, expMs: number): Promise<boolean> {
    this.prune();
    const cur = this.seen.get(key);
    if (cur !== undefined && cur > this.now()) return false;
    this.seen.set(key, expMs);
    if (this.journal) {
      await this.journal.append({ k: key, exp: expMs });
      if (this.journal.lines > 1024 && this.journal.lines > 4 * this.seen.size) {
        await this.journal.compact([...this.seen].map(([k, exp]) => ({ k, exp })));
      }
    }
    return true;
  }

  async close(): Promise<void> {
    await this.journal?.close();
  }

  private prune(): void {
    const t = this.now();
    for (const [k, exp] of this.seen) if (exp <= t) this.seen.delete(k);
  }
}

// ---------------------------------------------------------------------------------------------
// Admin handler

export interface SoarAdminOptions {
  /** the SOAR platform's public keys (re-read on every request) */
  keys: () => JSONWebKeySet;
  /** the audience requests must carry (default `portcullis-admin`) */
  audience?: string | (() => string);
  /** the policy's name of the key with this kid (recorded as the actor's name) */
  keyName?: (kid: string) => string | undefined;
  /** false: the admin API is off (the operator API answers 404); default true */
  enabled?: () => boolean;
  replay: ReplayCache;
  kill: KillSwitch;
  audit: AuditAppender;
  logger: Logger;
  metrics?: Metrics;
  /** allowance for the SOAR's clock being ahead (default 5 s) */
  clockSkewSec?: number;
  now?: () => number;
}

export type AdminResponse =
  | { status: 200; body: { ok: true; action: AdminAction['act']; sessionId: string; jti: string; result: unknown } }
  | { status: 400 | 401 | 403 | 404 | 409 | 500 | 502 | 503; body: { ok: false; error: { code: string; message: string } } };

const MESSAGES: Record<AdminRefusal, string> = {
  malformed: 'the request is not a compact JWS',
  unknown_key: 'the request is not signed by a configured SOAR key',
  signature_invalid: 'the signature does not verify',
  audience_invalid: 'the request is not addressed to this admin API',
  expired: 'the request has expired',
  issued_in_future: 'the request was issued in the future',
  lifetime_too_long: `requests may live at most ${MAX_ADMIN_TOKEN_LIFETIME_SEC} s`,
  claims_missing: 'iss, iat, exp and jti are required',
  replayed: 'this request was already used',
  request_invalid: 'act must be quarantine, kill or revoke, with sid',
  replay_cache_unavailable: 'the replay cache is unavailable; try again',
};

export class SoarAdmin {
  private readonly log: Logger;
  private readonly now: () => number;

  constructor(private readonly o: SoarAdminOptions) {
    this.log = o.logger.child({ component: 'soar-admin' });
    this.now = o.now ?? Date.now;
  }

  get audience(): string {
    const a = this.o.audience;
    return (typeof a === 'function' ? a() : a) ?? SOAR_ADMIN_AUDIENCE;
  }

  get enabled(): boolean {
    return this.o.enabled?.() ?? true;
  }

  async handle(jws: string, meta: { src?: EndpointInput; requestId?: string } = {}): Promise<AdminResponse> {
    const token = jws.trim();
    const digest = createHash('sha256').update(token).digest('hex');
    const v = await this.verify(token);
    if (!v.ok) return this.refuse(v.reason, digest, meta, v.kid);
    const { payload, action, kid } = v;
    const iss = payload.iss!;
    let fresh: boolean;
    try {
      fresh = await this.o.replay.claim(`${iss} ${payload.jti}`, payload.exp! * 1000 + (this.o.clockSkewSec ?? 5) * 1000);
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'replay cache write failed; refusing the admin request');
      return this.refuse('replay_cache_unavailable', digest, meta, kid, 503);
    }
    if (!fresh) return this.refuse('replayed', digest, meta, kid, 409, { iss, jti: payload.jti! });

    const keyName = kid ? this.o.keyName?.(kid) : undefined;
    const opts = {
      actor: { id: `soar:${iss}`.slice(0, 1024), type: 'soar' as const, ...(keyName ? { name: keyName } : {}) },
      ...(action.why ? { note: action.why } : {}),
      ...(meta.requestId ? { requestId: meta.requestId } : { requestId: payload.jti! }),
      ...(meta.src ? { src: meta.src } : {}),
    };
    this.o.metrics?.inc('soar_admin_requests_total', { outcome: 'accepted', act: action.act });
    try {
      const result =
        action.act === 'kill'
          ? await this.o.kill.kill(action.sid, opts)
          : action.act === 'quarantine'
            ? await this.o.kill.quarantine(action.sid, opts)
            : await this.o.kill.revoke(action.sid, opts);
      return { status: 200, body: { ok: true, action: action.act, sessionId: action.sid, jti: payload.jti!, result } };
    } catch (e) {
      const code = isPortcullisError(e) ? e.code : 'internal';
      const status = code === 'audit_write_failed' ? 503 : code === 'sandbox_failed' ? 502 : 500;
      return { status, body: { ok: false, error: { code, message: isPortcullisError(e) ? e.publicMessage : 'internal error' } } };
    }
  }

  private async verify(
    token: string,
  ): Promise<{ ok: true; payload: JWTPayload; action: AdminAction; kid: string | undefined } | { ok: false; reason: AdminRefusal; kid?: string }> {
    let kid: string | undefined;
    try {
      const h = decodeProtectedHeader(token);
      kid = typeof h.kid === 'string' ? h.kid.slice(0, 256) : undefined;
      if (token.split('.').length !== 3) return { ok: false, reason: 'malformed' };
    } catch {
      return { ok: false, reason: 'malformed' };
    }
    const skew = this.o.clockSkewSec ?? 5;
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, createLocalJWKSet(this.o.keys()), {
        algorithms: ['EdDSA', 'Ed25519', 'ES256'],
        audience: this.audience,
        clockTolerance: skew,
        currentDate: new Date(this.now()),
        requiredClaims: ['iss', 'iat', 'exp', 'jti'],
      }));
    } catch (e) {
      return { ok: false, reason: joseReason(e), ...(kid ? { kid } : {}) };
    }
    const nowSec = this.now() / 1000;
    if (typeof payload.iat !== 'number' || typeof payload.exp !== 'number' || typeof payload.jti !== 'string' || !payload.jti || typeof payload.iss !== 'string' || !payload.iss) {
      return { ok: false, reason: 'claims_missing', ...(kid ? { kid } : {}) };
    }
    if (payload.iat > nowSec + skew) return { ok: false, reason: 'issued_in_future', ...(kid ? { kid } : {}) };
    if (payload.exp - payload.iat > MAX_ADMIN_TOKEN_LIFETIME_SEC) return { ok: false, reason: 'lifetime_too_long', ...(kid ? { kid } : {}) };
    if (payload.jti.length > 256 || payload.iss.length > 256) return { ok: false, reason: 'request_invalid', ...(kid ? { kid } : {}) };
    const a = AdminActionSchema.safeParse({ act: payload.act, sid: payload.sid, ...(payload.why !== undefined ? { why: payload.why } : {}) });
    if (!a.success) return { ok: false, reason: 'request_invalid', ...(kid ? { kid } : {}) };
    return { ok: true, payload, action: a.data, kid };
  }

  private async refuse(
    reason: AdminRefusal,
    digest: string,
    meta: { src?: EndpointInput; requestId?: string },
    kid: string | undefined,
    status?: 400 | 401 | 403 | 409 | 503,
    verified?: { iss: string; jti: string },
  ): Promise<AdminResponse> {
    this.o.metrics?.inc('soar_admin_requests_total', { outcome: 'refused', reason });
    this.log.warn({ reason, kid }, 'SOAR admin request refused');
    try {
      await this.o.audit.append(
        apiActivity({
          time: this.now(),
          // an unverified request names no trustworthy actor; a replay of a verified one does
          actor: { id: verified ? `soar:${verified.iss}` : 'soar:unverified', type: 'soar' },
          outcome: 'failure',
          severity: 'high',
          activity: 'other',
          operation: 'soar.admin',
          service: 'soar-admin',
          resource: { type: 'soar-admin-request', id: `sha256:${digest}` },
          statusCode: reason,
          statusDetail: reason,
          ...(meta.requestId ? { requestId: meta.requestId } : {}),
          ...(meta.src ? { src: meta.src } : {}),
          unmapped: { claimed_kid: kid ?? null, ...(verified ? { jti: verified.jti } : {}) },
        }),
      );
    } catch (e) {
      this.log.error({ err: (e as Error).message, reason }, 'could not audit a refused SOAR admin request');
    }
    const code = status ?? (reason === 'malformed' || reason === 'request_invalid' || reason === 'claims_missing' ? 400 : 401);
    return { status: code, body: { ok: false, error: { code: reason, message: MESSAGES[reason] } } };
  }
}

function joseReason(e: unknown): AdminRefusal {
  if (e instanceof joseErrors.JWTExpired) return 'expired';
  if (e instanceof joseErrors.JWKSNoMatchingKey) return 'unknown_key';
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) return 'signature_invalid';
  if (e instanceof joseErrors.JWTClaimValidationFailed) {
    if (e.claim === 'aud') return 'audience_invalid';
    if (e.claim === 'iat' || e.claim === 'nbf') return 'issued_in_future';
    if (e.reason === 'missing') return 'claims_missing';
    return 'request_invalid';
  }
  if (e instanceof joseErrors.JOSEAlgNotAllowed || e instanceof joseErrors.JOSENotSupported) return 'unknown_key';
  if (e instanceof joseErrors.JWTInvalid || e instanceof joseErrors.JWSInvalid) return 'malformed';
  return 'signature_invalid';
}
