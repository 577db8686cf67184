import * as grpc from '@grpc/grpc-js';
import * as grpcXds from '@grpc/grpc-js-xds';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { XdsServer } from '../../xds-server/server.js';
import { buildSnapshot } from '../../xds-server/snapshot.js';
import { envoyServices } from '../../xds-server/grpc.js';
import { edsCluster, loadAssignment } from '../harness/sample-resources.js';
import { EXT, XDS } from '../../envoy/api/type-urls.js';
import { silentLogger } from '../../common/logger.js';

/**
 * A second xDS client that nobody here wrote: gRPC's own xDS resolver (`@grpc/grpc-js-xds`) resolves
 * `xds:///echo.portcullis.test` through our ADS server (listener with api_listener → RDS → CDS → EDS)
 * and completes a real gRPC call to the endpoint it was given.
 */
describe('gRPC xDS client against our ADS server', () => {
  const logger = silentLogger();
  let xds: XdsServer;
  let backend: grpc.Server;
  let backendPort: number;
  const calls: string[] = [];
  const TARGET = 'echo.portcullis.test';

  beforeAll(async () => {
    const svc = envoyServices();
    // The backend: Envoy's ext_authz service shape, used here only as a handy real gRPC service.
    backend = new grpc.Server();
    backend.addService(svc.authz.envoy.service.auth.v3.Authorization.service, {
      Check: (call: grpc.ServerUnaryCall<{ attributes?: { request?: { http?: { path?: string } } } }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        calls.push(call.request.attributes?.request?.http?.path ?? '');
        cb(null, { status: { code: 0, message: 'served by backend', details: [] } });
      },
    });
    backendPort = await new Promise((res, rej) => backend.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));

    xds = new XdsServer({ logger });
    await xds.listen('127.0.0.1:0');
    const ads = { ads: {}, resource_api_version: 'V3' };
    const snap = buildSnapshot({
      [XDS.listener]: [
        {
          name: TARGET,
          api_listener: {
            api_listener: {
              '@type': EXT.hcm,
              stat_prefix: 'grpc',
              rds: { route_config_name: 'echo-routes', config_source: ads },
              http_filters: [{ name: 'envoy.filters.http.router', typed_config: { '@type': EXT.router } }],
            },
          },
        },
      ],
      [XDS.route]: [
        { name: 'echo-routes', virtual_hosts: [{ name: 'echo', domains: [TARGET], routes: [{ match: { prefix: '' }, route: { cluster: 'echo-backend' } }] }] },
      ],
      [XDS.cluster]: [{ ...edsCluster('echo-backend'), lb_policy: 'ROUND_ROBIN' }],
      [XDS.endpoint]: [loadAssignment('echo-backend', '127.0.0.1', backendPort)],
    });
    xds.cache.setNow('grpc-client-1', snap);
    process.env.GRPC_XDS_BOOTSTRAP_CONFIG = JSON.stringify({
      xds_servers: [{ server_uri: `127.0.0.1:${xds.port}`, channel_creds: [{ type: 'insecure' }], server_features: ['xds_v3'] }],
      node: { id: 'grpc-client-1', cluster: 'grpc-clients', locality: {} },
    });
    grpcXds.register();
  });

  afterAll(async () => {
    await xds?.close(200);
    backend?.forceShutdown();
  });

  it('resolves the service through our ADS server and completes a gRPC call', async () => {
    const svc = envoyServices();
    const Client = svc.authz.envoy.service.auth.v3.Authorization;
    const client = new Client(`xds:///${TARGET}`, grpc.credentials.createInsecure());
    const reply = await new Promise<{ status?: { message?: string } }>((resolve, reject) =>
      client.Check({ attributes: { request: { http: { path: '/via-xds' } } } }, { deadline: Date.now() + 20_000 }, (err: unknown, r: unknown) =>
        err ? reject(err) : resolve(r as { status?: { message?: string } }),
      ),
    );
    client.close();
    expect(reply.status?.message).toBe('served by backend');
    expect(calls).toEqual(['/via-xds']);
    // It went through every resource type our server serves to gRPC clients.
    for (const t of ['LDS', 'RDS', 'CDS', 'EDS']) expect(xds.metrics.get('xds_ack_total', { type: t })).toBeGreaterThanOrEqual(1);
    expect(xds.metrics.total('xds_nack_total')).toBe(0);
  });
});
