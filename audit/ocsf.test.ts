import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { PortcullisEvent } from '../common/events.js';
import { canonical } from './canonical.js';
import {
  apiActivity,
  checkEnvelope,
  authentication,
  configChange,
  fileActivity,
  fromEnvoyAccessLog,
  fromPortcullisEvent,
  genericEvent,
  networkActivity,
  OCSF_SCHEMA_VERSION,
  OcsfEventSchema,
  type OcsfEvent,
} from './ocsf.js';

const actor = { id: 'operator:alice', type: 'admin' as const };

function mandatory(e: OcsfEvent) {
  expect(OcsfEventSchema.safeParse(e).success).toBe(true);
  expect(e.metadata.product.name).toBe('Portcullis');
  expect(e.metadata.version).toBe(OCSF_SCHEMA_VERSION);
  expect(e.type_uid).toBe(e.class_uid * 100 + e.activity_id);
  expect(Number.isInteger(e.time)).toBe(true);
  expect(e.unmapped).toHaveProperty('trace_id');
  expect(e.unmapped).toHaveProperty('session_id');
  expect((e.actor as { user: { uid: string } } | undefined)?.user.uid).toBeTruthy();
  expect(() => canonical(e)).not.toThrow();
}

describe('OCSF builders', () => {
  it('API Activity (6003) for an operator action', () => {
    const e = apiActivity({
      time: 1000,
      actor,
      outcome: 'success',
      activity: 'delete',
      operation: 'sandbox.kill',
      resource: { type: 'sandbox', id: 'sb-1' },
      traceId: 't-1',
      sessionId: 's-1',
    });
    mandatory(e);
    expect(e).toMatchObject({
      class_uid: 6003,
      category_uid: 6,
      activity_id: 4,
      activity_name: 'Delete',
      type_uid: 600304,
      status_id: 1,
      status: 'Success',
      severity_id: 1,
      time: 1000,
      api: { operation: 'sandbox.kill' },
      resources: [{ uid: 'sb-1', type: 'sandbox' }],
      actor: { user: { uid: 'operator:alice', type_id: 2 }, session: { uid: 's-1' } },
      metadata: { correlation_uid: 't-1' },
      unmapped: { trace_id: 't-1', session_id: 's-1' },
    });
  });

  it('config changes are API Activity with a config.* operation', () => {
    const e = configChange({ actor, outcome: 'failure', operation: 'config.reload_refused', resource: { type: 'policy', id: 'p.yaml' } });
    mandatory(e);
    expect(e).toMatchObject({ class_uid: 6003, activity_id: 3, api: { operation: 'config.reload_refused' }, status_id: 2, severity_id: 3, unmapped: { trace_id: null } });
    expect(() => configChange({ actor, outcome: 'success', operation: 'policy.reload', resource: { type: 'policy', id: 'p' } })).toThrow(/operation/);
  });

  it('Network Activity (4001), File System Activity (1001), Authentication (3002), Base Event (0)', () => {
    const n = networkActivity({
      actor: { id: 'envoy', type: 'service' },
      outcome: 'failure',
      activity: 'refuse',
      direction: 'outbound',
      src: { ip: '10.0.0.2', port: 40000 },
      dst: { hostname: 'evil.example', port: 443 },
      sni: 'evil.example',
      decision: 'denied',
      statusDetail: 'destination_not_allowed',
    });
    mandatory(n);
    expect(n).toMatchObject({ class_uid: 4001, activity_id: 5, connection_info: { direction_id: 2 }, action_id: 2, tls: { sni: 'evil.example' }, metadata: { profiles: ['security_control'] } });

    const f = fileActivity({ actor: { id: 'sb-1', type: 'sandbox' }, outcome: 'success', activity: 'rename', file: { path: '/work/a.txt' }, newPath: '/work/b.txt', tool: 'fs.move' });
    mandatory(f);
    expect(f).toMatchObject({ class_uid: 1001, activity_id: 5, file: { name: 'a.txt', path: '/work/a.txt', type_id: 1 }, file_result: { name: 'b.txt' } });

    const a = authentication({ actor: { id: 'sds-minter', type: 'service' }, outcome: 'success', activity: 'authentication_ticket', user: { id: 'spiffe://x/y' }, service: 'egress', token: { id: 'jti-1', expiresAt: 5 } });
    mandatory(a);
    expect(a).toMatchObject({ class_uid: 3002, category_uid: 3, activity_id: 3, user: { uid: 'spiffe://x/y' }, service: { name: 'egress' }, unmapped: { token: { id: 'jti-1', expires_at: 5 } } });

    const g = genericEvent({ actor, outcome: 'unknown', type: 'weird.thing', data: { x: 1 } });
    mandatory(g);
    expect(g).toMatchObject({ class_uid: 0, activity_id: 99, type_uid: 99, metadata: { event_code: 'weird.thing' }, unmapped: { portcullis_type: 'weird.thing', data: { x: 1 } } });
  });

  it('inputs are strict: unknown keys and bad values are refused with audit_event_invalid', () => {
    const good = { actor, outcome: 'success' as const, activity: 'read' as const, operation: 'tool.call', resource: { type: 'tool', id: 'fs.read' } };
    expect(() => apiActivity({ ...good, extra: 1 } as never)).toThrow(expect.objectContaining({ code: 'audit_event_invalid' }));
    expect(() => apiActivity({ ...good, actor: { ...actor, role: 'x' } } as never)).toThrow(/audit|invalid/i);
    expect(() => apiActivity({ ...good, outcome: 'maybe' } as never)).toThrow();
    expect(() => networkActivity({ actor, outcome: 'success', activity: 'open', direction: 'inbound', src: { ip: 'not-an-ip' }, dst: {} })).toThrow();
  });

  it('builds a valid event from any valid API activity input', () => {
    fc.assert(
      fc.property(
        fc.record({
          id: fc.string({ minLength: 1, maxLength: 30 }),
          op: fc.string({ minLength: 1, maxLength: 30 }),
          outcome: fc.constantFrom('success', 'failure', 'attempt', 'unknown' as const),
          activity: fc.constantFrom('create', 'read', 'update', 'delete', 'other' as const),
          unmapped: fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }),
        }),
        (r) => {
          const e = apiActivity({ actor: { id: r.id, type: 'soar' }, outcome: r.outcome, activity: r.activity, operation: r.op, resource: { type: 't', id: r.id }, unmapped: JSON.parse(JSON.stringify(r.unmapped)) });
          expect(OcsfEventSchema.safeParse(e).success).toBe(true);
          expect(canonical(JSON.parse(canonical(e)))).toBe(canonical(e));
        },
      ),
      { numRuns: 100 },
    );
  });
});

describe('checkEnvelope (the writer\'s fast check)', () => {
  it('agrees with OcsfEventSchema on valid events and on damaged ones', () => {
    const valid = [
      apiActivity({ actor, outcome: 'success', activity: 'read', operation: 'tool.call', resource: { type: 'tool', id: 'x' } }),
      fromEnvoyAccessLog({ start_time_ms: 1, direction: 'egress' }),
      genericEvent({ actor, outcome: 'unknown', type: 'x' }),
    ];
    const paths = ['class_uid', 'class_name', 'category_uid', 'category_name', 'activity_id', 'activity_name', 'type_uid', 'type_name', 'time', 'severity_id', 'severity', 'status_id', 'status', 'metadata', 'metadata.version', 'metadata.product', 'metadata.product.name', 'metadata.product.vendor_name', 'unmapped', 'unmapped.trace_id', 'unmapped.session_id'];
    fc.assert(
      fc.property(
        fc.constantFrom(...valid),
        fc.constantFrom(...paths),
        fc.oneof(fc.constant(undefined), fc.constant(null), fc.integer({ min: -5, max: 700000 }), fc.string({ maxLength: 5 }), fc.constant('1.3.0'), fc.constant('Portcullis'), fc.constant({})),
        (ev, path, value) => {
          const e = structuredClone(ev) as Record<string, unknown>;
          const parts = path.split('.');
          let o = e;
          for (const p of parts.slice(0, -1)) o = o[p] as Record<string, unknown>;
          if (value === undefined) delete o[parts.at(-1)!];
          else o[parts.at(-1)!] = value;
          expect(checkEnvelope(e) === null, `${path}=${JSON.stringify(value)}`).toBe(OcsfEventSchema.safeParse(e).success);
        },
      ),
      { numRuns: 500 },
    );
    for (const v of valid) expect(checkEnvelope(v)).toBeNull();
  });
});

describe('fromPortcullisEvent', () => {
  const ev = (type: string, data: Record<string, unknown>, severity: PortcullisEvent['severity'] = 'info'): PortcullisEvent => ({
    type,
    time: '2026-01-15T12:00:00.000Z',
    severity,
    source: 'src',
    sessionId: 'sess-9',
    data,
  });

  it('maps the known producer events', () => {
    const nack = fromPortcullisEvent(ev('config.nack', { node: 'n1', typeUrl: 'type.googleapis.com/envoy.config.listener.v3.Listener', version: '3', errorDetail: 'boom' }, 'error'));
    mandatory(nack);
    expect(nack).toMatchObject({ class_uid: 6003, status_id: 2, status_detail: 'boom', api: { operation: 'config.nack' }, time: Date.parse('2026-01-15T12:00:00.000Z'), unmapped: { session_id: 'sess-9', portcullis_type: 'config.nack' } });

    const refused = fromPortcullisEvent(ev('config.reload_refused', { file: 'policy.yaml', code: 'policy_invalid', issues: [{ path: 'a' }] }, 'error'));
    expect(refused).toMatchObject({ class_uid: 6003, status_id: 2, resources: [{ type: 'policy', uid: 'policy.yaml' }] });

    const reloaded = fromPortcullisEvent(ev('config.policy_reloaded', { file: 'policy.yaml', digest: 'abc' }));
    expect(reloaded).toMatchObject({ class_uid: 6003, status_id: 1 });

    const minted = fromPortcullisEvent(ev('leaf.minted', { name: 'egress', serialNumber: '0a', notAfter: '2026-01-16T00:00:00.000Z', generation: 1 }));
    mandatory(minted);
    expect(minted).toMatchObject({ class_uid: 3002, activity_id: 3, status_id: 1, user: { uid: 'egress' }, unmapped: { token: { id: '0a', kind: 'x509-leaf' } } });

    const mintRefused = fromPortcullisEvent(ev('mint.refused', { name: 'x', reason: 'not_allowed' }, 'warning'));
    expect(mintRefused).toMatchObject({ class_uid: 3002, status_id: 2, status_detail: 'not_allowed' });

    const created = fromPortcullisEvent(ev('sandbox.created', { sandboxId: 'sb-1' }));
    expect(created).toMatchObject({ class_uid: 6003, activity_id: 1, resources: [{ type: 'sandbox', uid: 'sb-1' }] });

    const rotated = fromPortcullisEvent(ev('ca.rotated', { from: 1, to: 2 }));
    expect(rotated).toMatchObject({ class_uid: 6003, api: { operation: 'config.ca_rotated' }, resources: [{ type: 'ca', uid: '2' }] });
  });

  it('keeps unknown types generically, with the raw type, and redacts secret-looking keys', () => {
    const e = fromPortcullisEvent(ev('brand.new_thing', { token: 'abc', nested: { privateKey: 'k', ok: 1 }, when: new Date(0), n: Number.NaN, u: undefined }));
    mandatory(e);
    expect(e).toMatchObject({ class_uid: 0, metadata: { event_code: 'brand.new_thing' }, unmapped: { portcullis_type: 'brand.new_thing' } });
    const data = (e.unmapped as unknown as { data: Record<string, unknown> }).data;
    expect(data).toEqual({ token: '[redacted]', nested: { privateKey: '[redacted]', ok: 1 }, when: '1970-01-01T00:00:00.000Z', n: 'NaN' });
  });

  it('never throws for odd but well-formed events', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), fc.string({ maxLength: 30 }), fc.dictionary(fc.string({ maxLength: 8 }), fc.anything({ maxDepth: 2 })), (type, time, data) => {
        const e = fromPortcullisEvent({ type, time, severity: 'info', source: '', data });
        expect(OcsfEventSchema.safeParse(e).success).toBe(true);
        expect(() => canonical(e)).not.toThrow();
      }),
      { numRuns: 2000 },
    );
  });

  it('keeps a `__proto__` key as data instead of letting it replace a prototype', () => {
    const data = JSON.parse('{"x":{"__proto__":{"polluted":1}}}') as Record<string, unknown>;
    const e = fromPortcullisEvent({ type: 'odd', time: '', severity: 'info', source: '', data });
    expect(OcsfEventSchema.safeParse(e).success).toBe(true);
    expect(JSON.stringify(e)).toContain('"[__proto__]":{"polluted":1}');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe('fromEnvoyAccessLog', () => {
  it('turns an egress denial into a refused outbound Network Activity', () => {
    const e = fromEnvoyAccessLog({
      start_time_ms: '1700000000123',
      direction: 'egress',
      downstream_remote_address: '10.1.2.3:51000',
      upstream_host: null,
      requested_server_name: 'evil.example',
      bytes_received: 517,
      bytes_sent: 0,
      duration_ms: 3,
      response_flags: 'UAEX',
      deny_reason: 'destination_not_allowed',
      session_id: 'sess-1',
      request_id: '-',
    });
    mandatory(e);
    expect(e).toMatchObject({
      class_uid: 4001,
      activity_id: 5,
      status_id: 2,
      action_id: 2,
      time: 1700000000123,
      src_endpoint: { ip: '10.1.2.3', port: 51000 },
      dst_endpoint: { hostname: 'evil.example' },
      connection_info: { direction_id: 2 },
      traffic: { bytes_in: 517, bytes_out: 0 },
      unmapped: { session_id: 'sess-1', trace_id: null, deny_reason: 'destination_not_allowed' },
    });
  });

  it('turns an ingress request into allowed inbound traffic', () => {
    const e = fromEnvoyAccessLog({ start_time_ms: 5, direction: 'ingress', downstream_remote_address: '[::1]:4000', downstream_local_address: '127.0.0.1:8443', response_flags: '-' });
    expect(e).toMatchObject({ activity_id: 6, status_id: 1, action_id: 1, connection_info: { direction_id: 1 }, src_endpoint: { ip: '::1', port: 4000 }, dst_endpoint: { ip: '127.0.0.1', port: 8443 } });
  });
});
