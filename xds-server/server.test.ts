import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { XdsServer, isLocalAddress } from './server.js';
import { envoyServices } from './grpc.js';
import { fakeSnapshot } from './testkit.js';
import { XDS } from '../envoy/api/type-urls.js';
import { silentLogger } from '../common/logger.js';

type Duplex = grpc.ClientDuplexStream<Record<string, unknown>, Record<string, unknown>>;

function adsClient(address: string) {
  const Ctor = envoyServices().ads.envoy.service.discovery.v3.AggregatedDiscoveryService;
  return new Ctor(address, grpc.credentials.createInsecure());
}

/** Open a stream, send requests, and collect responses and the final status. */
function openStream(address: string) {
  const client = adsClient(address);
  const call = client.StreamAggregatedResources() as unknown as Duplex;
  const responses: Array<Record<string, unknown>> = [];
  const ended = new Promise<grpc.StatusObject | grpc.ServiceError>((resolve) => {
    call.on('data', (r) => responses.push(r));
    call.on('error', (e: grpc.ServiceError) => resolve(e));
    call.on('status', (s: grpc.StatusObject) => resolve(s));
  });
  return { client, call, responses, ended };
}

const node = { id: 'envoy-test', cluster: 'portcullis' };

describe('XdsServer over gRPC', () => {
  let server: XdsServer;
  let address: string;

  beforeAll(async () => {
    server = new XdsServer({ logger: silentLogger() });
    address = await server.listen('127.0.0.1:0');
    server.cache.setNow('envoy-test', fakeSnapshot('v1', { [XDS.listener]: { a: '1' } }));
  });
  afterAll(async () => {
    await server.close(200);
  });

  it.each([
    ['an unknown type URL', { node, type_url: 'type.googleapis.com/not.A.Type' }, grpc.status.INVALID_ARGUMENT, /unsupported type_url/],
    ['100k resource names', { node, type_url: XDS.route, resource_names: Array.from({ length: 100_000 }, (_, i) => `route-${i}`) }, grpc.status.RESOURCE_EXHAUSTED, /limit/],
    ['an unknown node', { node: { id: 'stranger' }, type_url: XDS.listener }, grpc.status.NOT_FOUND, /no configuration for node/],
    ['a garbage nonce', { node, type_url: XDS.listener, response_nonce: 'deadbeef' }, grpc.status.INVALID_ARGUMENT, /never issued/],
    ['no node on the first request', { type_url: XDS.listener }, grpc.status.INVALID_ARGUMENT, /node\.id/],
  ])('refuses %s with a clear status while another stream keeps working', async (_what, req, code, msg) => {
    const good = openStream(address);
    good.call.write({ node, type_url: XDS.listener });
    await waitFor(() => good.responses.length === 1);
    const bad = openStream(address);
    bad.call.write(req);
    const status = await bad.ended;
    expect(status.code).toBe(code);
    expect(status.details).toMatch(msg);
    // never leaks a stack trace
    expect(status.details).not.toMatch(/at .*\.ts:\d+/);
    // the good stream still gets the next update
    const v = `v-${Math.random().toString(36).slice(2)}`;
    server.cache.setNow('envoy-test', fakeSnapshot(v, { [XDS.listener]: { a: v } }));
    await waitFor(() => good.responses.length === 2);
    expect(good.responses[1]!.version_info).toBe(v);
    good.call.end();
    good.client.close();
    bad.client.close();
  });

  it('binds to loopback or a unix socket only, unless told otherwise', async () => {
    expect(isLocalAddress('127.0.0.1:1')).toBe(true);
    expect(isLocalAddress('[::1]:1')).toBe(true);
    expect(isLocalAddress('0.0.0.0:1')).toBe(false);
    expect(isLocalAddress('198.51.100.1:1')).toBe(false);
    const s = new XdsServer({ logger: silentLogger() });
    await expect(s.listen('0.0.0.0:0')).rejects.toThrow(/refusing to bind/);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-xds-'));
    const sock = path.join(dir, 'xds.sock');
    await s.listen(`unix:${sock}`);
    expect(fs.statSync(sock).mode & 0o777).toBe(0o600);
    await s.close(100);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

async function waitFor(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}
