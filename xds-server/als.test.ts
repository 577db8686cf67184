import { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AccessLogReceiver, SNI_VERDICT_WAIT_MS } from './als.js';
import { EventBus } from '../common/events.js';
import { Metrics } from '../common/metrics.js';
import { silentLogger } from '../common/logger.js';
import { SNI } from './translate/sni.js';

/** The receiver on a fake gRPC server: `send` feeds one StreamAccessLogsMessage of a log name. */
function receiver() {
  let impl: Record<string, (call: EventEmitter, cb: () => void) => void> = {};
  const events = new EventBus();
  const metrics = new Metrics();
  const als = new AccessLogReceiver({ logger: silentLogger(), metrics, events });
  als.register({ addService: (_d, i) => void (impl = i as unknown as typeof impl) });
  const streams = new Map<string, EventEmitter>();
  const send = (logName: string, body: Record<string, unknown>) => {
    let call = streams.get(logName);
    if (!call) {
      call = new EventEmitter();
      streams.set(logName, call);
      impl.StreamAccessLogs!(call, () => undefined);
      call.emit('data', { identifier: { node: { id: 'n1' }, log_name: logName } });
    }
    call.emit('data', body);
  };
  return { events, metrics, send, als };
}

const str = (s: string) => ({ type_url: 'type.googleapis.com/google.protobuf.StringValue', value: Buffer.concat([Buffer.from([0x0a, s.length]), Buffer.from(s)]) });

/** The egress listener's final entry of a CONNECT that went to the SNI check. */
const tunnelEntry = (streamId: string) => ({
  http_logs: {
    log_entry: [{ common_properties: { stream_id: streamId, route_name: SNI.tunnelRoute, downstream_wire_bytes_received: '517' }, request: { request_method: 'CONNECT', authority: 'api.test:443' }, response: { response_code: { value: 200 } } }],
  },
});

/** The SNI listener's entry of that tunnel: refused by RBAC, or passed. */
const verdictEntry = (tunnelStream: string, refused: boolean) => ({
  tcp_logs: {
    log_entry: [
      {
        common_properties: {
          stream_id: `b-${tunnelStream}`,
          ...(refused ? { connection_termination_details: 'rbac_access_denied_matched_policy[none]' } : { upstream_cluster: 'egress_dfp' }),
          filter_state_objects: { [SNI.authorityKey]: str('api.test:443'), [SNI.tunnelStreamKey]: str(tunnelStream) },
          tls_properties: { tls_sni_hostname: 'evil.test' },
        },
      },
    ],
  },
});

describe('access logs of SNI-checked tunnels: a refused tunnel is one network.denied event', () => {
  afterEach(() => vi.useRealTimers());

  it('the egress entry waits for the verdict: refused → only the denial (linked by stream id); passed → the egress entry', () => {
    vi.useFakeTimers();
    const { events, metrics, send } = receiver();
    send('egress', tunnelEntry('A1'));
    send('egress', tunnelEntry('A2'));
    expect(events.history('network.egress')).toHaveLength(0);
    send(SNI.logName, verdictEntry('A1', true));
    send(SNI.logName, verdictEntry('A2', false));
    const denied = events.history('network.denied');
    expect(denied).toHaveLength(1);
    expect(denied[0]!.data).toMatchObject({ lane: SNI.logName, reason: 'sni_mismatch', tunnelStreamId: 'A1', sni: 'evil.test' });
    expect(events.history('network.egress').map((e) => e.data.streamId)).toEqual(['A2']);
    vi.advanceTimersByTime(SNI_VERDICT_WAIT_MS * 2);
    expect(events.history('network.egress').map((e) => e.data.streamId)).toEqual(['A2']);
    expect(metrics.total('als_refused_tunnel_entries_total')).toBe(1);
  });

  it('a verdict that came first is applied at once; with no verdict the entry goes out after the wait', () => {
    vi.useFakeTimers();
    const { events, send, als } = receiver();
    send(SNI.logName, verdictEntry('B1', true));
    send('egress', tunnelEntry('B1'));
    send(SNI.logName, verdictEntry('B2', false));
    send('egress', tunnelEntry('B2'));
    expect(events.history('network.egress').map((e) => e.data.streamId)).toEqual(['B2']);
    send('egress', tunnelEntry('B3'));
    vi.advanceTimersByTime(SNI_VERDICT_WAIT_MS - 1);
    expect(events.history('network.egress').map((e) => e.data.streamId)).toEqual(['B2']);
    vi.advanceTimersByTime(2);
    expect(events.history('network.egress').map((e) => e.data.streamId)).toEqual(['B2', 'B3']);
    // at shutdown an entry still waiting goes out as it is
    send('egress', tunnelEntry('B4'));
    expect(events.history('network.egress').map((e) => e.data.streamId)).toEqual(['B2', 'B3']);
    als.flush();
    expect(events.history('network.egress').map((e) => e.data.streamId)).toEqual(['B2', 'B3', 'B4']);
    // an ordinary CONNECT (not through the SNI check) is never held
    send('egress', { http_logs: { log_entry: [{ common_properties: { stream_id: 'C1' }, request: { request_method: 'CONNECT' }, response: { response_code: { value: 200 } } }] } });
    expect(events.history('network.egress').map((e) => e.data.streamId)).toEqual(['B2', 'B3', 'B4', 'C1']);
  });
});

describe('the session of an entry', () => {
  const entry = (headers: Record<string, string>, filterState?: string) => ({
    http_logs: {
      log_entry: [
        {
          common_properties: { stream_id: `s-${Math.random()}`, ...(filterState ? { filter_state_objects: { 'portcullis.session': str(filterState) } } : {}) },
          request: { request_method: 'GET', authority: 'plain.test:80', request_headers: headers },
          response: { response_code: { value: 200 } },
        },
      ],
    },
  });

  it('is the session header, or else what the egress listener recorded in filter state (the route took the header off)', async () => {
    const r = receiver();
    r.send('egress', entry({ 'x-portcullis-session': 'from-header' }, 'from-state'));
    r.send('egress', entry({}, 'from-state'));
    r.send('egress', entry({}));
    await new Promise((res) => setImmediate(res));
    expect(r.events.history().map((e) => e.sessionId ?? null)).toEqual(['from-header', 'from-state', null]);
  });
});
