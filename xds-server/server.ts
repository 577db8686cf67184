import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../common/logger.js';
import { Metrics } from '../common/metrics.js';
import { EventBus, type EventSink } from '../common/events.js';
import { XDS, type XdsTypeUrl } from '../envoy/api/type-urls.js';
import { SnapshotCache } from './cache.js';
import { DeltaStream, SotwStream, type StreamLimits } from './stream.js';
import { envoyServices } from './grpc.js';
import type { DiscoveryRequest__Output } from '../envoy/generated/envoy/service/discovery/v3/DiscoveryRequest.js';
import type { DiscoveryResponse } from '../envoy/generated/envoy/service/discovery/v3/DiscoveryResponse.js';
import type { DeltaDiscoveryRequest__Output } from '../envoy/generated/envoy/service/discovery/v3/DeltaDiscoveryRequest.js';
import type { DeltaDiscoveryResponse } from '../envoy/generated/envoy/service/discovery/v3/DeltaDiscoveryResponse.js';

/**
 * The control plane's gRPC server: ADS (SotW and Delta) for every xDS type, and the standalone SDS
 * service for secrets. Other services (ALS, ext_authz) are added with `addService` by their modules.
 *
 * Binds to loopback or a unix socket by default; anything else must be asked for explicitly.
 */

export interface XdsServerOptions {
  logger: Logger;
  cache?: SnapshotCache;
  metrics?: Metrics;
  events?: EventSink;
  limits?: Partial<StreamLimits>;
  /** Allow binding to a non-loopback address (default: refuse). */
  allowNonLoopback?: boolean;
}

type Duplex<Req, Resp> = grpc.ServerDuplexStream<Req, Resp>;

export class XdsServer {
  readonly cache: SnapshotCache;
  readonly metrics: Metrics;
  readonly events: EventSink;
  private readonly server: grpc.Server;
  private readonly log: Logger;
  private readonly streams = new Set<{ close(): void; isClosed: boolean }>();
  private readonly calls = new Set<grpc.ServerDuplexStream<unknown, unknown>>();
  private boundAddress?: string;

  constructor(private readonly opts: XdsServerOptions) {
    this.cache = opts.cache ?? new SnapshotCache();
    this.metrics = opts.metrics ?? new Metrics();
    this.events = opts.events ?? new EventBus();
    this.log = opts.logger.child({ component: 'xds-server' });
    this.server = new grpc.Server({
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
      'grpc.max_send_message_length': 64 * 1024 * 1024,
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
    });
    const svc = envoyServices();
    this.server.addService(svc.ads.envoy.service.discovery.v3.AggregatedDiscoveryService.service, {
      StreamAggregatedResources: (call: Duplex<DiscoveryRequest__Output, DiscoveryResponse>) => this.sotw(call),
      DeltaAggregatedResources: (call: Duplex<DeltaDiscoveryRequest__Output, DeltaDiscoveryResponse>) => this.delta(call),
    });
    const secretsOnly: readonly XdsTypeUrl[] = [XDS.secret];
    this.server.addService(svc.sds.envoy.service.secret.v3.SecretDiscoveryService.service, {
      StreamSecrets: (call: Duplex<DiscoveryRequest__Output, DiscoveryResponse>) => this.sotw(call, secretsOnly, 'sds'),
      DeltaSecrets: (call: Duplex<DeltaDiscoveryRequest__Output, DeltaDiscoveryResponse>) => this.delta(call, secretsOnly, 'sds'),
      FetchSecrets: (_call: unknown, cb: grpc.sendUnaryData<unknown>) =>
        cb({ code: grpc.status.UNIMPLEMENTED, details: 'use StreamSecrets or DeltaSecrets' }),
    });
  }

  /** Register another gRPC service (ALS, ext_authz) before `listen`. */
  addService(def: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation): void {
    this.server.addService(def, impl);
  }

  /**
   * Listen on `127.0.0.1:PORT` (0 = ephemeral), `[::1]:PORT`, or `unix:/path`. Returns the bound
   * address in the same form (with the real port).
   */
  async listen(address = '127.0.0.1:0'): Promise<string> {
    if (!this.opts.allowNonLoopback && !isLocalAddress(address)) {
      throw new Error(`refusing to bind xDS to ${address}: use loopback or a unix socket (allowNonLoopback to override)`);
    }
    if (address.startsWith('unix:')) {
      const p = address.slice('unix:'.length);
      if (fs.existsSync(p)) fs.rmSync(p);
    }
    const port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    if (address.startsWith('unix:')) {
      fs.chmodSync(address.slice('unix:'.length), 0o600);
      this.boundAddress = address;
    } else {
      const host = address.slice(0, address.lastIndexOf(':'));
      this.boundAddress = `${host}:${port}`;
    }
    this.log.info({ address: this.boundAddress }, 'xDS server listening');
    return this.boundAddress;
  }

  get address(): string | undefined {
    return this.boundAddress;
  }

  /** Port of a TCP listener (for bootstraps). */
  get port(): number {
    const a = this.boundAddress ?? '';
    return Number(a.slice(a.lastIndexOf(':') + 1));
  }

  get openStreams(): number {
    let n = 0;
    for (const s of this.streams) if (!s.isClosed) n++;
    return n;
  }

  private attach<Req, Resp>(call: Duplex<Req, Resp>, stream: { onRequest(r: Req): void; close(): void; isClosed: boolean }): void {
    this.streams.add(stream);
    this.calls.add(call as unknown as grpc.ServerDuplexStream<unknown, unknown>);
    const done = () => {
      stream.close();
      this.streams.delete(stream);
      this.calls.delete(call as unknown as grpc.ServerDuplexStream<unknown, unknown>);
    };
    call.on('data', (req: Req) => stream.onRequest(req));
    call.on('end', () => {
      done();
      call.end();
    });
    call.on('error', done);
    call.on('cancelled', done);
    call.on('close', done);
  }

  private failCall<Req, Resp>(call: Duplex<Req, Resp>) {
    return (f: { code: grpc.status; message: string }) => {
      // Ending a server stream with a status: emit an error carrying the code and details.
      call.emit('error', { code: f.code, details: f.message, metadata: new grpc.Metadata() });
    };
  }

  private sotw(call: Duplex<DiscoveryRequest__Output, DiscoveryResponse>, types?: readonly XdsTypeUrl[], service = 'ads'): void {
    const stream = new SotwStream(
      { cache: this.cache, logger: this.log, metrics: this.metrics, events: this.events, limits: this.opts.limits, types, service },
      { send: (r) => call.write(r), fail: this.failCall(call) },
    );
    this.attach(call, stream);
  }

  private delta(call: Duplex<DeltaDiscoveryRequest__Output, DeltaDiscoveryResponse>, types?: readonly XdsTypeUrl[], service = 'ads'): void {
    const stream = new DeltaStream(
      { cache: this.cache, logger: this.log, metrics: this.metrics, events: this.events, limits: this.opts.limits, types, service },
      { send: (r) => call.write(r), fail: this.failCall(call) },
    );
    this.attach(call, stream);
  }

  /** Stop accepting, end open streams, and shut down (bounded by `graceMs`). */
  async close(graceMs = 2000): Promise<void> {
    for (const s of this.streams) s.close();
    for (const c of this.calls) c.end();
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      t.unref?.();
      this.server.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
    this.cache.close();
  }
}

export function isLocalAddress(address: string): boolean {
  if (address.startsWith('unix:')) return true;
  const host = address.slice(0, address.lastIndexOf(':')).replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
