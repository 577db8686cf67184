import { status as GrpcStatus } from '@grpc/grpc-js';
import type { DiscoveryRequest__Output } from '../envoy/generated/envoy/service/discovery/v3/DiscoveryRequest.js';
import type { DiscoveryResponse } from '../envoy/generated/envoy/service/discovery/v3/DiscoveryResponse.js';
import type { DeltaDiscoveryRequest__Output } from '../envoy/generated/envoy/service/discovery/v3/DeltaDiscoveryRequest.js';
import type { DeltaDiscoveryResponse } from '../envoy/generated/envoy/service/discovery/v3/DeltaDiscoveryResponse.js';
import type { Node__Output } from '../envoy/generated/envoy/config/core/v3/Node.js';
import { SHORT_NAME, WILDCARD_TYPES, XDS, isXdsTypeUrl, type XdsTypeUrl } from '../envoy/api/type-urls.js';
import { XdsRequestError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { Metrics } from '../common/metrics.js';
import type { EventSink } from '../common/events.js';
import type { SnapshotCache } from './cache.js';
import type { Resource, Snapshot } from './snapshot.js';

/**
 * The xDS stream state machines, independent of gRPC: `onRequest` consumes a request, responses go
 * out through `send`, fatal protocol errors through `fail`. The gRPC service (server.ts) wires them
 * to real streams; the property tests drive them directly.
 *
 * Push order for every update: CDS → EDS → SDS → ECDS → LDS → RDS (adds and changes), then — once those are
 * acknowledged — the removals of stale listeners and clusters (make before break).
 */

export const PUSH_ORDER: readonly XdsTypeUrl[] = [XDS.cluster, XDS.endpoint, XDS.secret, XDS.extensionConfig, XDS.listener, XDS.route];
const REMOVAL_ORDER: readonly XdsTypeUrl[] = [XDS.listener, XDS.route, XDS.extensionConfig, XDS.cluster, XDS.endpoint, XDS.secret];

export interface StreamLimits {
  /** Most resource names one request may carry. */
  maxResourceNames: number;
  /** Longest resource name accepted. */
  maxNameLength: number;
}
export const DEFAULT_LIMITS: StreamLimits = { maxResourceNames: 10_000, maxNameLength: 1024 };

export interface StreamDeps {
  cache: SnapshotCache;
  logger: Logger;
  metrics: Metrics;
  events: EventSink;
  limits?: Partial<StreamLimits>;
  /** Restrict the stream to some types (the SDS-only service); default: every xDS type (ADS). */
  types?: readonly XdsTypeUrl[];
  /** Label for logs and metrics: `ads`, `sds`. */
  service?: string;
}

export interface StreamFailure {
  code: GrpcStatus;
  message: string;
}

interface InflightChange {
  nonce: string;
  version: string;
  /** SotW: the response is the whole state; Delta: an increment */
  replace: boolean;
  set: Map<string, Resource>;
  remove: Set<string>;
}

interface TypeState {
  wildcard: boolean;
  names: Set<string>;
  /** What the client holds from us (name → resource), as last sent. */
  sent: Map<string, Resource>;
  latestNonce?: string;
  issued: Set<string>;
  awaitingAck: boolean;
  /** version_info of the last response (SotW) / system_version_info (Delta). */
  sentVersion?: string;
  /** What the client has acknowledged (the base `sent` is derived from). */
  acked: Map<string, Resource>;
  /** Responses not yet answered, in the order sent: what each one changes. */
  inflight: InflightChange[];
  /** Names the client asked for that do not exist, already reported as removed (Delta). */
  reportedMissing: Set<string>;
}

const MAX_ISSUED_NONCES = 256;
let streamSeq = 0;

abstract class XdsStream<Req extends { response_nonce: string; type_url: string; node: Node__Output | null; error_detail: { code: number; message: string } | null }, Resp> {
  protected node?: Node__Output;
  protected key?: string;
  protected readonly types = new Map<XdsTypeUrl, TypeState>();
  protected readonly limits: StreamLimits;
  protected readonly log: Logger;
  private nonceSeq = 0;
  private closed = false;
  private unsubscribe?: () => void;
  private removalPending = false;
  readonly id = ++streamSeq;
  protected abstract readonly flavor: 'sotw' | 'delta';

  constructor(
    protected readonly deps: StreamDeps,
    private readonly io: { send: (r: Resp) => void; fail: (f: StreamFailure) => void },
  ) {
    this.limits = { ...DEFAULT_LIMITS, ...deps.limits };
    this.log = deps.logger.child({ stream: this.id });
  }

  /** Process one request. Never throws: protocol errors end the stream with a gRPC status. */
  onRequest(req: Req): void {
    if (this.closed) return;
    try {
      this.handle(req);
    } catch (e) {
      if (e instanceof XdsRequestError) {
        this.failWith(grpcCodeFor(e.code), e.message);
        return;
      }
      this.log.error({ err: e }, 'xDS stream error');
      this.failWith(GrpcStatus.INTERNAL, 'internal error');
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe?.();
    this.deps.metrics.inc('xds_streams_closed_total', { service: this.service });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  protected get service(): string {
    return this.deps.service ?? 'ads';
  }

  private failWith(code: GrpcStatus, message: string): void {
    this.deps.metrics.inc('xds_request_errors_total', { service: this.service, code: GrpcStatus[code] ?? String(code) });
    this.log.warn({ code: GrpcStatus[code], message }, 'xDS request refused');
    this.close();
    this.io.fail({ code, message });
  }

  private handle(req: Req): void {
    if (!this.node) {
      if (!req.node || !req.node.id) throw new XdsRequestError('xds_bad_request', 'the first request on a stream must carry node.id');
      const key = this.deps.cache.resolve({ id: req.node.id, cluster: req.node.cluster || undefined });
      if (!key) throw new XdsRequestError('xds_unknown_node', `no configuration for node "${truncate(req.node.id)}"`);
      this.node = req.node;
      this.key = key;
      this.unsubscribe = this.deps.cache.onUpdate((k) => {
        if (k === this.key && !this.closed) this.pushAll('snapshot');
      });
      this.deps.metrics.inc('xds_streams_opened_total', { service: this.service, flavor: this.flavor });
      this.log.info({ node: req.node.id, flavor: this.flavor }, 'xDS stream opened');
    }
    const typeUrl = req.type_url;
    if (!typeUrl) throw new XdsRequestError('xds_bad_request', 'type_url is required');
    if (!isXdsTypeUrl(typeUrl) || (this.deps.types && !this.deps.types.includes(typeUrl))) {
      throw new XdsRequestError('xds_unknown_type', `unsupported type_url "${truncate(typeUrl)}"`);
    }
    this.checkNames(req);
    let st = this.types.get(typeUrl);
    if (!st) {
      st = { wildcard: false, names: new Set(), sent: new Map(), acked: new Map(), issued: new Set(), awaitingAck: false, reportedMissing: new Set(), inflight: [] };
      this.types.set(typeUrl, st);
    }
    const nonce = req.response_nonce;
    if (nonce) {
      if (!st.issued.has(nonce)) {
        throw new XdsRequestError('xds_bad_request', `response_nonce was never issued on this stream for ${SHORT_NAME[typeUrl]}`);
      }
      const nack = req.error_detail && (req.error_detail.code !== 0 || req.error_detail.message)
        ? req.error_detail.message || `code ${req.error_detail.code}`
        : undefined;
      if (nonce !== st.latestNonce) {
        this.deps.metrics.inc('xds_stale_nonce_total', { type: SHORT_NAME[typeUrl] });
        if (!this.onSupersededReply(typeUrl, st, nonce, nack)) return;
      } else {
        st.awaitingAck = false;
        if (nack !== undefined) this.onNack(typeUrl, st, nonce, nack);
        else this.onAck(typeUrl, st, nonce);
      }
    }
    this.resolveMissing(typeUrl, st, req);
    this.onSubscription(typeUrl, st, req, !nonce);
    this.maybeRemove();
  }

  /**
   * A reply to a response that a later one superseded. SotW: the later response carries the whole
   * state, so the protocol says ignore the request. Delta overrides this: responses are increments,
   * and a NACKed one was not applied. Returns true when the request should be processed further.
   */
  protected onSupersededReply(_typeUrl: XdsTypeUrl, _st: TypeState, _nonce: string, _nack: string | undefined): boolean {
    return false;
  }

  /**
   * Names this request newly subscribes to that the live snapshot lacks go to the cache's on-demand
   * resolver (secrets only). Names already subscribed (an ACK repeats them) are not asked again.
   */
  private resolveMissing(typeUrl: XdsTypeUrl, st: TypeState, req: Req): void {
    if (typeUrl !== XDS.secret || !this.key) return;
    const snap = this.snapshot();
    const have = snap?.resources.get(typeUrl);
    const missing = this.requestedNames(req).filter((n) => n !== '*' && !st.names.has(n) && !have?.has(n));
    if (missing.length) this.deps.cache.resolveMissing(this.key, typeUrl, missing);
  }

  protected abstract requestedNames(req: Req): readonly string[];
  protected abstract checkNames(req: Req): void;
  protected abstract onSubscription(typeUrl: XdsTypeUrl, st: TypeState, req: Req, initial: boolean): void;
  /** Send what the current snapshot requires for one type; `keepStale` keeps resources being replaced. */
  protected abstract sendType(typeUrl: XdsTypeUrl, st: TypeState, snap: Snapshot, opts: { keepStale: boolean; force?: boolean }): boolean;
  /** Send removals only (phase two). */
  protected abstract sendRemovals(typeUrl: XdsTypeUrl, st: TypeState, snap: Snapshot): void;
  protected abstract hasStale(typeUrl: XdsTypeUrl, st: TypeState, snap: Snapshot): boolean;

  protected onAck(typeUrl: XdsTypeUrl, st: TypeState, nonce: string): void {
    this.deps.metrics.inc('xds_ack_total', { type: SHORT_NAME[typeUrl] });
    const version = baseVersion(st.inflight.find((c) => c.nonce === nonce)?.version ?? st.sentVersion ?? '');
    this.resolve(st, nonce, true);
    if (this.key) this.deps.cache.recordAck(this.key, this.node?.id ?? '', typeUrl, version);
    this.log.debug({ type: SHORT_NAME[typeUrl], version }, 'ACK');
  }

  protected onNack(typeUrl: XdsTypeUrl, st: TypeState, nonce: string, errorDetail: string): void {
    const version = baseVersion(st.inflight.find((c) => c.nonce === nonce)?.version ?? st.sentVersion ?? '');
    const nodeId = this.node?.id ?? '';
    this.deps.cache.recordNack({ key: this.key!, nodeId, typeUrl, version, errorDetail, at: new Date() });
    this.deps.metrics.inc('xds_nack_total', { type: SHORT_NAME[typeUrl] });
    this.log.warn({ node: nodeId, type: SHORT_NAME[typeUrl], version, errorDetail }, 'Envoy rejected a configuration (NACK); it keeps its last good config');
    this.deps.events.emit({
      type: 'config.nack',
      severity: 'error',
      source: 'xds-server',
      data: { node: nodeId, typeUrl, version, errorDetail },
    });
    this.resolve(st, nonce, false);
    // What the client kept may now include resources the current snapshot no longer has.
    const snap = this.snapshot();
    if (snap && this.hasStale(typeUrl, st, snap)) this.markRemovalPending();
  }

  /**
   * A reply to response `nonce`. Clients apply responses in order, so every earlier response is
   * settled by now: those are folded into what the client holds; this one too when ACKed, dropped
   * when NACKed (the client kept its previous state). `sent` is then recomputed.
   */
  protected resolve(st: TypeState, nonce: string, acked: boolean): void {
    const idx = st.inflight.findIndex((c) => c.nonce === nonce);
    if (idx < 0) return;
    const settled = st.inflight.splice(0, idx + 1);
    const last = settled.pop()!;
    for (const c of settled) applyChange(st.acked, c);
    if (acked) applyChange(st.acked, last);
    st.sent = new Map(st.acked);
    for (const c of st.inflight) applyChange(st.sent, c);
  }

  /** Record a response's change and apply it to what the client is assumed to hold. */
  protected record(st: TypeState, change: InflightChange): void {
    st.inflight.push(change);
    if (st.inflight.length > MAX_ISSUED_NONCES) applyChange(st.acked, st.inflight.shift()!);
    applyChange(st.sent, change);
  }

  /** Forget a resource everywhere (unsubscribed: a later re-subscribe must be answered). */
  protected forget(st: TypeState, name: string): void {
    st.sent.delete(name);
    st.acked.delete(name);
    for (const c of st.inflight) {
      c.set.delete(name);
      c.remove.delete(name);
    }
  }

  protected nextNonce(st: TypeState): string {
    const nonce = `${this.id}.${++this.nonceSeq}`;
    st.latestNonce = nonce;
    st.issued.add(nonce);
    if (st.issued.size > MAX_ISSUED_NONCES) st.issued.delete(st.issued.values().next().value as string);
    st.awaitingAck = true;
    return nonce;
  }

  protected emit(resp: Resp, bytes: number, typeUrl: XdsTypeUrl): void {
    this.deps.metrics.inc('xds_responses_total', { type: SHORT_NAME[typeUrl], flavor: this.flavor });
    this.deps.metrics.inc('xds_response_bytes_total', { type: SHORT_NAME[typeUrl], flavor: this.flavor }, bytes);
    this.io.send(resp);
  }

  protected snapshot(): Snapshot | undefined {
    return this.key ? this.deps.cache.get(this.key) : undefined;
  }

  protected isNacked(typeUrl: XdsTypeUrl, version: string): boolean {
    return !!this.key && this.deps.cache.isNacked(this.key, typeUrl, version);
  }

  /** Push the current snapshot to every subscribed type, in order, keeping stale resources for now. */
  protected pushAll(_reason: string): void {
    const snap = this.snapshot();
    if (!snap) return;
    for (const t of PUSH_ORDER) {
      const st = this.types.get(t);
      if (!st) continue;
      this.sendType(t, st, snap, { keepStale: true });
      if (this.hasStale(t, st, snap)) this.removalPending = true;
    }
    this.maybeRemove();
  }

  /** Phase two: when nothing is waiting for an ACK, remove what the new snapshot no longer has. */
  private maybeRemove(): void {
    if (!this.removalPending || this.closed) return;
    for (const st of this.types.values()) if (st.awaitingAck) return;
    this.removalPending = false;
    const snap = this.snapshot();
    if (!snap) return;
    for (const t of REMOVAL_ORDER) {
      const st = this.types.get(t);
      if (st && !this.isNacked(t, snap.version) && this.hasStale(t, st, snap)) this.sendRemovals(t, st, snap);
    }
  }

  protected markRemovalPending(): void {
    this.removalPending = true;
  }
}

// ───────────────────────────── State of the world ─────────────────────────────

export class SotwStream extends XdsStream<DiscoveryRequest__Output, DiscoveryResponse> {
  protected readonly flavor = 'sotw' as const;

  protected checkNames(req: DiscoveryRequest__Output): void {
    checkNameList(req.resource_names, this.limits);
  }

  protected requestedNames(req: DiscoveryRequest__Output): readonly string[] {
    return req.resource_names;
  }

  protected onSubscription(typeUrl: XdsTypeUrl, st: TypeState, req: DiscoveryRequest__Output, initial: boolean): void {
    const names = req.resource_names;
    const wildcard = WILDCARD_TYPES.has(typeUrl) && (names.length === 0 || names.includes('*'));
    const next = new Set(wildcard ? [] : names);
    const added = [...next].filter((n) => !st.names.has(n));
    for (const n of st.names) if (!next.has(n)) this.forget(st, n); // a later re-subscribe must be answered
    st.wildcard = wildcard;
    st.names = next;
    const snap = this.snapshot();
    if (!snap) return;
    if (initial) {
      // A (re)connected client: answer unless it already holds exactly this version of a wildcard type.
      if (wildcard && req.version_info && req.version_info === snap.version) {
        for (const r of snap.resources.get(typeUrl)!.values()) {
          st.sent.set(r.name, r);
          st.acked.set(r.name, r);
        }
        st.sentVersion = snap.version;
        return;
      }
      this.sendType(typeUrl, st, snap, { keepStale: false, force: true });
      return;
    }
    if (added.length) this.sendType(typeUrl, st, snap, { keepStale: true, force: true });
  }

  private desired(typeUrl: XdsTypeUrl, st: TypeState, snap: Snapshot, keepStale: boolean): { list: Resource[]; stale: boolean } {
    const byName = snap.resources.get(typeUrl)!;
    const out = new Map<string, Resource>();
    if (st.wildcard) for (const r of byName.values()) out.set(r.name, r);
    else for (const n of st.names) {
      const r = byName.get(n);
      if (r) out.set(n, r);
    }
    let stale = false;
    // Wildcard types: keep resources being replaced until the new ones are acknowledged.
    // Secrets: a still-requested secret omitted from a response makes Envoy reject the whole response.
    if (keepStale || typeUrl === XDS.secret) {
      for (const [n, r] of st.sent) {
        if (out.has(n)) continue;
        if (st.wildcard || (typeUrl === XDS.secret && st.names.has(n))) {
          out.set(n, r);
          stale = true;
        }
      }
    }
    return { list: [...out.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)), stale };
  }

  protected hasStale(typeUrl: XdsTypeUrl, st: TypeState, snap: Snapshot): boolean {
    if (!st.wildcard) return false;
    const byName = snap.resources.get(typeUrl)!;
    for (const n of st.sent.keys()) if (!byName.has(n)) return true;
    return false;
  }

  protected sendType(typeUrl: XdsTypeUrl, st: TypeState, snap: Snapshot, opts: { keepStale: boolean; force?: boolean }): boolean {
    if (this.isNacked(typeUrl, snap.version)) return false;
    const { list, stale } = this.desired(typeUrl, st, snap, opts.keepStale);
    const changed =
      list.length !== st.sent.size || list.some((r) => st.sent.get(r.name)?.hash !== r.hash);
    if (!changed && !opts.force) return false;
    if (!changed && opts.force && st.sentVersion !== undefined && !st.wildcard && list.every((r) => st.sent.has(r.name)) && typeUrl !== XDS.secret) {
      // Nothing new for a named subscription: no response needed.
      return false;
    }
    const version = stale ? `${snap.version}.keep` : snap.version;
    const nonce = this.nextNonce(st);
    let bytes = 0;
    const resources = list.map((r) => {
      bytes += r.encoded.length;
      return { type_url: typeUrl, value: r.encoded };
    });
    this.record(st, { nonce, version, replace: true, set: new Map(list.map((r) => [r.name, r])), remove: new Set() });
    st.sentVersion = version;
    if (stale) this.markRemovalPending();
    this.emit({ version_info: version, resources, type_url: typeUrl, nonce }, bytes, typeUrl);
    return true;
  }

  protected sendRemovals(typeUrl: XdsTypeUrl, st: TypeState, snap: Snapshot): void {
    this.sendType(typeUrl, st, snap, { keepStale: false, force: true });
  }
}

// ───────────────────────────── Incremental (Delta) ─────────────────────────────

export class DeltaStream extends XdsStream<DeltaDiscoveryRequest__Output, DeltaDiscoveryResponse> {
  protected readonly flavor = 'delta' as const;

  protected override onSupersededReply(typeUrl: XdsTypeUrl, st: TypeState, nonce: string, nack: string | undefined): boolean {
    // Increments are applied in order: a NACK of an earlier response means its changes are not held.
    if (nack !== undefined) this.onNack(typeUrl, st, nonce, nack);
    else this.resolve(st, nonce, true);
    return true;
  }

  protected requestedNames(req: DeltaDiscoveryRequest__Output): readonly string[] {
    return req.resource_names_subscribe;
  }

  protected checkNames(req: DeltaDiscoveryRequest__Output): void {
    checkNameList(req.resource_names_subscribe, this.limits);
    checkNameList(req.resource_names_unsubscribe, this.limits);
    const initial = Object.keys(req.initial_resource_versions ?? {});
    if (initial.length > this.limits.maxResourceNames) {
      throw new XdsRequestError('xds_too_many_resources', `initial_resource_versions has ${initial.length} entries (limit ${this.limits.maxResourceNames})`);
    }
  }

  protected onSubscription(typeUrl: XdsTypeUrl, st: TypeState, req: DeltaDiscoveryRequest__Output, initial: boolean): void {
    const sub = req.resource_names_subscribe;
    const unsub = req.resource_names_unsubscribe;
    const firstForType = initial && st.latestNonce === undefined;
    if (firstForType) {
      // Legacy wildcard: the first request for LDS/CDS with no names subscribes to everything.
      st.wildcard = WILDCARD_TYPES.has(typeUrl) && (sub.length === 0 || sub.includes('*'));
      const snap = this.snapshot();
      // What a reconnecting client already holds: only matching versions count as held.
      for (const [name, version] of Object.entries(req.initial_resource_versions ?? {})) {
        const r = snap?.resources.get(typeUrl)?.get(name);
        const held = r && r.hash === version ? r : { typeUrl, name, body: undefined, encoded: Buffer.alloc(0), hash: `client:${version}` };
        st.sent.set(name, held);
        st.acked.set(name, held);
      }
    } else {
      if (sub.includes('*')) st.wildcard = true;
    }
    if (unsub.includes('*')) st.wildcard = false;
    let added = false;
    for (const n of sub) {
      if (n === '*') continue;
      if (!st.names.has(n)) added = true;
      st.names.add(n);
    }
    for (const n of unsub) {
      st.names.delete(n);
      this.forget(st, n);
      st.reportedMissing.delete(n);
    }
    const snap = this.snapshot();
    if (!snap) return;
    if (firstForType || added || sub.includes('*')) this.sendType(typeUrl, st, snap, { keepStale: true, force: firstForType });
    if (firstForType && this.hasStale(typeUrl, st, snap)) this.markRemovalPending();
  }

  private wanted(typeUrl: XdsTypeUrl, st: TypeState, snap: Snapshot): Map<string, Resource> {
    const byName = snap.resources.get(typeUrl)!;
    if (st.wildcard) {
      const all = new Map(byName);
      for (const n of st.names) {
        const r = byName.get(n);
        if (r) all.set(n, r);
      }
      return all;
    }
    const out = new Map<string, Resource>();
    for (const n of st.names) {
      const r = byName.get(n);
      if (r) out.set(n, r);
    }
    return out;
  }

  protected hasStale(typeUrl: XdsTypeUrl, st: TypeState, snap: Snapshot): boolean {
    const want = this.wanted(typeUrl, st, snap);
    for (const n of st.sent.keys()) if (!want.has(n)) return true;
    if (!st.wildcard) for (const n of st.names) if (!want.has(n) && !st.reportedMissing.has(n)) return true;
    return false;
  }

  protected sendType(typeUrl: XdsTypeUrl, st: TypeState, snap: Snapshot, opts: { keepStale: boolean; force?: boolean }): boolean {
    if (this.isNacked(typeUrl, snap.version)) return false;
    const want = this.wanted(typeUrl, st, snap);
    const updates = [...want.values()].filter((r) => st.sent.get(r.name)?.hash !== r.hash);
    const removals = opts.keepStale ? [] : this.removals(st, want);
    if (!updates.length && !removals.length && !opts.force) return false;
    if (!updates.length && !removals.length && st.sentVersion !== undefined) return false;
    this.respond(typeUrl, st, snap, updates, removals);
    return true;
  }

  private removals(st: TypeState, want: Map<string, Resource>): string[] {
    const out = new Set<string>();
    for (const n of st.sent.keys()) if (!want.has(n)) out.add(n);
    if (!st.wildcard) for (const n of st.names) if (!want.has(n) && !st.reportedMissing.has(n)) out.add(n);
    return [...out].sort();
  }

  protected sendRemovals(typeUrl: XdsTypeUrl, st: TypeState, snap: Snapshot): void {
    const removals = this.removals(st, this.wanted(typeUrl, st, snap));
    if (removals.length) this.respond(typeUrl, st, snap, [], removals);
  }

  private respond(typeUrl: XdsTypeUrl, st: TypeState, snap: Snapshot, updates: Resource[], removals: string[]): void {
    const nonce = this.nextNonce(st);
    let bytes = 0;
    const resources = updates.map((r) => {
      bytes += r.encoded.length + r.name.length + r.hash.length;
      return { name: r.name, version: r.hash, resource: { type_url: typeUrl, value: r.encoded } };
    });
    for (const n of removals) {
      bytes += n.length;
      if (!st.wildcard && st.names.has(n)) st.reportedMissing.add(n);
    }
    for (const r of updates) st.reportedMissing.delete(r.name);
    this.record(st, { nonce, version: snap.version, replace: false, set: new Map(updates.map((r) => [r.name, r])), remove: new Set(removals) });
    st.sentVersion = snap.version;
    this.emit(
      { system_version_info: snap.version, resources, type_url: typeUrl, nonce, removed_resources: removals },
      bytes,
      typeUrl,
    );
  }
}

function applyChange(held: Map<string, Resource>, c: InflightChange): void {
  if (c.replace) held.clear();
  for (const [n, r] of c.set) held.set(n, r);
  for (const n of c.remove) held.delete(n);
}

function checkNameList(names: readonly string[], limits: StreamLimits): void {
  if (names.length > limits.maxResourceNames) {
    throw new XdsRequestError('xds_too_many_resources', `request names ${names.length} resources (limit ${limits.maxResourceNames})`);
  }
  for (const n of names) {
    if (n.length > limits.maxNameLength) {
      throw new XdsRequestError('xds_bad_request', `resource name longer than ${limits.maxNameLength} characters`);
    }
  }
}

/** `v-abc.keep` → `v-abc`: a NACK of the make-before-break response counts against its snapshot. */
export function baseVersion(v: string): string {
  return v.endsWith('.keep') ? v.slice(0, -5) : v;
}

function truncate(s: string, n = 80): string {
  return s.length > n ? `${s.slice(0, n)}…` : s;
}

/** The one place xDS request errors become gRPC status codes. */
export function grpcCodeFor(code: string): GrpcStatus {
  switch (code) {
    case 'xds_unknown_type':
    case 'xds_bad_request':
      return GrpcStatus.INVALID_ARGUMENT;
    case 'xds_too_many_resources':
      return GrpcStatus.RESOURCE_EXHAUSTED;
    case 'xds_unknown_node':
      return GrpcStatus.NOT_FOUND;
    default:
      return GrpcStatus.INTERNAL;
  }
}
