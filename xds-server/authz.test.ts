import { describe, expect, it } from 'vitest';
import { EventBus } from '../common/events.js';
import { silentLogger } from '../common/logger.js';
import { compileText } from '../policy/compile.js';
import { explainTool } from '../policy/explain.js';
import type { Ir } from '../policy/ir.js';
import type { CheckRequest__Output } from '../envoy/generated/envoy/service/auth/v3/CheckRequest.js';
import { IngressAuthz, INGRESS_LOG_NAME, JWT_FILTER } from './authz.js';

const HEAD = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';
function ir(mcp: string): Ir {
  return compileText(`${HEAD}mcp:\n${mcp}`, { file: 'p.yaml', baseDir: '/etc/portcullis' });
}

const LOCAL = ir(`  limits: { connectionsPerCaller: 2 }
  tools:
    rules:
      - { callers: ["*"], tools: [exec, read_file, write_file], effect: allow }
      - { callers: [bob], tools: [exec], effect: deny }
      - { callers: ["*"], tools: [exec], effect: deny, arguments: [{ name: cwd, pathPrefix: /etc }] }
      - { callers: [carol], tools: [read_file], effect: allow, arguments: [{ name: path, pathPrefix: /work }] }
`);

/**
 * A CheckRequest as Envoy sends it (proto-loader output shape): the caller header jwt_authn set from
 * the verified claim (`caller: null`: none), optionally a JWT payload in the metadata context (which
 * the ingress no longer sends, and the decision must not read).
 */
function req(o: { caller?: string | null; payload?: Record<string, string>; method?: string; body?: unknown; requestId?: string }): CheckRequest__Output {
  const body = o.body === undefined ? '' : typeof o.body === 'string' ? o.body : JSON.stringify(o.body);
  const caller = o.caller === null ? {} : { 'x-portcullis-caller': o.caller ?? 'alice' };
  const payload = o.payload ? { fields: Object.fromEntries(Object.entries(o.payload).map(([k, v]) => [k, { kind: 'stringValue', stringValue: v }])) } : undefined;
  return {
    attributes: {
      metadata_context: { filter_metadata: payload ? { [JWT_FILTER]: { fields: { jwt_payload: { kind: 'structValue', structValue: payload } } } } : {}, typed_filter_metadata: {} },
      request: { http: { method: o.method ?? 'POST', headers: { 'x-request-id': o.requestId ?? `r-${Math.random()}`, ...caller }, raw_body: Buffer.from(body), body: '', path: '/mcp' } },
    },
  } as unknown as CheckRequest__Output;
}

const call = (name: string, args: unknown, id: number | string = 1) => ({ jsonrpc: '2.0', id, method: 'tools/call', params: { name, arguments: args } });

function authz(policy: Ir = LOCAL, now?: () => number) {
  return new IngressAuthz({ policy: () => policy, logger: silentLogger(), events: new EventBus(), ...(now ? { now } : {}), leaseTtlMs: 1000 });
}

describe('ingress ext_authz decision', () => {
  it.each([
    ['alice', call('exec', { command: ['ls'] }), true, null],
    ['bob', call('exec', { command: ['ls'] }), false, 'tool_not_allowed'],
    ['alice', call('exec', { command: ['ls'], cwd: '/etc/../etc/ssl' }), false, 'argument_denied'],
    ['alice', call('exec', { command: ['ls'], cwd: '/work' }), true, null],
    ['carol', call('read_file', { path: '/work/a' }), true, null],
    ['carol', call('read_file', { path: '/work/../etc/passwd' }), true, null],
    ['alice', call('list_files', { path: '/' }), false, 'tool_not_allowed'],
    ['alice', call('no_such_tool', {}), false, 'tool_not_allowed'],
    ['alice', call('exec', { command: ['ls'], extra: 1 }), false, 'schema_invalid'],
    ['alice', call('exec', {}), false, 'schema_invalid'],
    ['alice', { jsonrpc: '2.0', id: 1, method: 'tools/list' }, true, null],
    ['alice', { jsonrpc: '2.0', method: 'notifications/initialized' }, true, null],
    ['alice', { jsonrpc: '2.0', id: 1, result: {} }, true, null],
    ['alice', { jsonrpc: '2.0', id: 1, method: 'ping', junk: 1 }, false, 'schema_invalid'],
    ['alice', [call('exec', { command: ['ls'] })], false, 'schema_invalid'],
    ['alice', '{"jsonrpc":', false, 'schema_invalid'],
    ['alice', { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'exec', arguments: { command: ['ls'] }, sneak: 1 } }, false, 'schema_invalid'],
  ])('%s %j → allow=%s %s', (caller, body, allow, reason) => {
    const v = authz().decide(req({ caller, body }));
    expect(v.allow).toBe(allow);
    if (!v.allow) expect(v.denial.reason).toBe(reason);
  });

  it('agrees with policy explain on every schema-valid call (the decision is explainTool on normalized arguments)', () => {
    const a = authz();
    for (const caller of ['alice', 'bob', 'carol', 'dave']) {
      for (const [tool, args] of [
        ['exec', { command: ['x'] }],
        ['exec', { command: ['x'], cwd: '/etc' }],
        ['read_file', { path: '/work/x' }],
        ['read_file', { path: '/srv/x' }],
        ['write_file', { path: '/etc/x', content: '' }],
      ] as const) {
        const v = a.decide(req({ caller, body: call(tool, args) }));
        const ex = explainTool(LOCAL, { caller, tool, arguments: args });
        expect(v.allow, `${caller} ${tool} ${JSON.stringify(args)}`).toBe(ex.decision === 'allow');
        if (!v.allow) expect(v.denial.reason).toBe(ex.reason);
      }
    }
  });

  it('the caller is the header jwt_authn set from the verified claim: none, empty or malformed is refused, a payload alone is not read', () => {
    const exec = call('exec', { command: ['ls'] });
    for (const caller of [null, '', ' ', 'a b', 'x'.repeat(257)]) {
      expect(authz().decide(req({ caller, body: exec })), JSON.stringify(caller)).toMatchObject({ allow: false, denial: { reason: 'unauthorized' } });
    }
    // a JWT payload in the metadata context names nobody: only the header does
    expect(authz().decide(req({ caller: null, payload: { sub: 'alice' }, body: exec }))).toMatchObject({ allow: false, denial: { reason: 'unauthorized' } });
    expect(authz().decide(req({ caller: 'alice', body: exec })).allow).toBe(true);
    // oidc: jwt_authn copies the policy's caller claim (email) into the header (ingress.test.ts)
    const oidc = ir(`  auth: { mode: oidc, issuer: "https://idp.example.com/", audience: mcp, jwksUri: "https://idp.example.com/jwks", callerClaim: email }
  tools:
    rules:
      - { callers: [a@example.com], tools: [exec], effect: allow }
`);
    expect(authz(oidc).decide(req({ caller: 'a@example.com', body: exec })).allow).toBe(true);
    expect(authz(oidc).decide(req({ caller: 'someone@example.com', body: exec }))).toMatchObject({ allow: false, denial: { reason: 'tool_not_allowed' } });
  });

  it('GET and DELETE carry no body and are allowed for an authenticated caller', () => {
    expect(authz().decide(req({ method: 'GET' })).allow).toBe(true);
    expect(authz().decide(req({ method: 'DELETE' })).allow).toBe(true);
  });

  it('a denial is a 4xx with x-deny-reason and a JSON-RPC body carrying the request id, reason and one line; it is an audit event', () => {
    const events = new EventBus();
    const a = new IngressAuthz({ policy: () => LOCAL, logger: silentLogger(), events });
    const r = a.check(req({ caller: 'bob', body: call('exec', { command: ['cat', '/secret'] }, 'req-9') }));
    expect(r.status?.code).toBe(7);
    expect(r.denied_response?.status?.code).toBe(403);
    expect(r.denied_response?.headers).toEqual(expect.arrayContaining([expect.objectContaining({ header: { key: 'x-deny-reason', value: 'tool_not_allowed' } })]));
    expect(JSON.parse(r.denied_response!.body!)).toEqual({ jsonrpc: '2.0', id: 'req-9', error: { code: -32003, message: 'The policy does not allow you to use this tool.', data: { reason: 'tool_not_allowed' } } });
    const ev = events.history('mcp.request_denied');
    expect(ev).toHaveLength(1);
    expect(ev[0]!.data).toMatchObject({ caller: 'bob', reason: 'tool_not_allowed', tool: 'exec' });
    expect(ev[0]!.data.argumentsSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(JSON.stringify(ev)).not.toContain('/secret');
    expect(a.check(req({ caller: 'alice', body: '{' })).denied_response?.status?.code).toBe(400);
  });
});

describe('ingress per-caller concurrency leases', () => {
  it('admits up to connectionsPerCaller requests in flight per caller, releases on the access log, expires lost ones', () => {
    let now = 0;
    const events = new EventBus();
    const a = authz(LOCAL, () => now);
    a.followAccessLogs(events);
    const ok = (caller: string, id: string) => a.check(req({ caller, requestId: id, method: 'GET' })).status?.code === 0;
    expect(ok('alice', 'a1')).toBe(true);
    expect(ok('alice', 'a2')).toBe(true);
    const third = a.check(req({ caller: 'alice', requestId: 'a3', method: 'GET' }));
    expect(third.denied_response?.status?.code).toBe(429);
    expect(third.denied_response?.headers).toEqual(expect.arrayContaining([expect.objectContaining({ header: { key: 'x-deny-reason', value: 'connection_limit' } })]));
    expect(ok('bob', 'b1')).toBe(true);
    // an access log for another lane, or an intermediate entry, releases nothing
    events.emit({ type: 'network.egress', severity: 'info', source: 'envoy', data: { lane: 'egress', streamId: 'a1' } });
    events.emit({ type: 'network.egress', severity: 'info', source: 'envoy', data: { lane: INGRESS_LOG_NAME, streamId: 'a1', intermediate: true } });
    expect(a.inflight('alice')).toBe(2);
    events.emit({ type: 'network.egress', severity: 'info', source: 'envoy', data: { lane: INGRESS_LOG_NAME, streamId: 'a1' } });
    expect(a.inflight('alice')).toBe(1);
    expect(ok('alice', 'a3')).toBe(true);
    // a lease whose log never comes expires
    now += 1001;
    expect(a.inflight('alice')).toBe(0);
    expect(a.metrics.get('mcp_authz_leases_expired_total')).toBe(2);
  });

  it('denied requests take no lease', () => {
    const a = authz();
    for (let i = 0; i < 5; i++) a.check(req({ caller: 'bob', body: call('exec', { command: ['x'] }) }));
    expect(a.inflight('bob')).toBe(0);
  });

  it('an exception while deciding is a denial (fail closed), never an allow', async () => {
    const a = new IngressAuthz({ policy: () => { throw new Error('policy store at /var/lib/x broke'); }, logger: silentLogger() });
    const lanes = new Map<string, (r: CheckRequest__Output) => unknown>();
    a.attach({ use: (lane, h) => lanes.set(lane, h) });
    expect([...lanes.keys()]).toEqual(['mcp']);
    const res = await lanes.get('mcp')!(req({ body: call('exec', { command: ['x'] }) }));
    expect(res).toMatchObject({ status: { code: 7 }, denied_response: { status: { code: 500 } } });
    expect(JSON.stringify(res)).not.toContain('/var/lib');
  });
});
