import type { CheckRequest__Output } from '../envoy/generated/envoy/service/auth/v3/CheckRequest.js';
import type { CheckResponse } from '../envoy/generated/envoy/service/auth/v3/CheckResponse.js';
import type { Metrics } from '../common/metrics.js';
import type { EventSink } from '../common/events.js';
import { allow, deny, type AuthzRouter } from './authz-router.js';
import type { SessionAuthority } from './sessions.js';
import { BUMP } from './translate/bump.js';

/**
 * ext_authz decisions for the egress listener.
 *
 * `egress-tunnel` (a CONNECT to a bump / external-sds destination): the tunnel must present a valid,
 * unrevoked session token in Proxy-Authorization (`Basic base64(session:<token>)` — what a proxy
 * URL `http://session:<token>@…` makes every client send — or `Bearer <token>`). The session id is
 * handed to Envoy in `x-portcullis-session`, which listener A records for the tunnel.
 *
 * Requests inside a bumped tunnel are checked by Envoy alone (translate/bump.ts): the session's
 * revocation or expiry reaches it as deny routes, the Host/SNI/authority check is an RBAC condition.
 */

const DESCRIPTIONS: Record<string, string> = {
  session_credential_missing: 'this destination needs the session credential your proxy settings carry',
  session_expired: 'the session credential has expired',
  session_revoked: 'the session was revoked',
};

export function registerEgressAuthz(router: AuthzRouter, deps: { sessions: SessionAuthority; metrics: Metrics; events: EventSink }): void {
  router.use('egress-tunnel', async (req) => tunnelCheck(req, deps));
}

function denied(deps: { metrics: Metrics; events: EventSink }, lane: string, reason: string, status: number, req: CheckRequest__Output, sessionId?: string): CheckResponse {
  deps.metrics.inc('egress_authz_denied_total', { lane, reason });
  deps.events.emit({
    type: 'network.denied',
    severity: 'warning',
    source: 'ext_authz',
    ...(sessionId ? { sessionId } : {}),
    data: { lane, reason, authority: req.attributes?.request?.http?.host ?? '' },
  });
  return deny(status, reason, DESCRIPTIONS[reason] ?? reason, status === 407 ? { 'proxy-authenticate': 'Basic realm="portcullis"' } : {});
}

export function proxyToken(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^\s*(basic|bearer)\s+(\S+)\s*$/i.exec(header);
  if (!m) return undefined;
  if (m[1]!.toLowerCase() === 'bearer') return m[2];
  const decoded = Buffer.from(m[2]!, 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  return i >= 0 ? decoded.slice(i + 1) || undefined : undefined;
}

async function tunnelCheck(req: CheckRequest__Output, deps: { sessions: SessionAuthority; metrics: Metrics; events: EventSink }): Promise<CheckResponse> {
  const headers = req.attributes?.request?.http?.headers ?? {};
  const r = await deps.sessions.verifyToken(proxyToken(headers['proxy-authorization']));
  if (!r.ok) return denied(deps, 'egress-tunnel', r.reason, r.reason === 'session_credential_missing' ? 407 : 403, req);
  deps.metrics.inc('egress_authz_allowed_total', { lane: 'egress-tunnel' });
  return allow({ [BUMP.sessionHeader]: r.sessionId }, ['proxy-authorization']);
}
