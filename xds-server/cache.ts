import { EventEmitter } from 'node:events';
import type { Snapshot } from './snapshot.js';
import type { XdsTypeUrl } from '../envoy/api/type-urls.js';

/**
 * Per-node snapshot cache.
 *
 * Snapshots are stored under a key: a node id, or `cluster:<node.cluster>` for a group of Envoys
 * sharing one configuration. A node is resolved by its id first, then by its cluster.
 *
 * Publishing is coalesced: a burst of `set` calls within `holdOffMs` results in one notification
 * carrying the latest snapshot (the ones in between are never pushed). NACKed versions are
 * remembered per key and type, so a version Envoy refused is never sent again, on any stream.
 */

export interface NodeIdentity {
  id: string;
  cluster?: string;
}

export interface CacheOptions {
  /** Hold-off before a published snapshot is pushed; later publishes within it replace it. */
  holdOffMs?: number;
}

export interface NackRecord {
  key: string;
  nodeId: string;
  typeUrl: XdsTypeUrl;
  version: string;
  errorDetail: string;
  at: Date;
}

export class SnapshotCache {
  private readonly live = new Map<string, Snapshot>();
  private readonly pending = new Map<string, { snapshot: Snapshot; timer: NodeJS.Timeout }>();
  private readonly nacks = new Map<string, Map<XdsTypeUrl, Map<string, NackRecord>>>();
  private readonly ee = new EventEmitter();
  readonly holdOffMs: number;

  constructor(opts: CacheOptions = {}) {
    this.holdOffMs = opts.holdOffMs ?? 50;
    this.ee.setMaxListeners(0);
  }

  static keyForCluster(cluster: string): string {
    return `cluster:${cluster}`;
  }

  /** Publish (coalesced by the hold-off). */
  set(key: string, snapshot: Snapshot): void {
    const p = this.pending.get(key);
    if (p) clearTimeout(p.timer);
    if (this.holdOffMs <= 0) {
      this.pending.delete(key);
      this.commit(key, snapshot);
      return;
    }
    const timer = setTimeout(() => {
      this.pending.delete(key);
      this.commit(key, snapshot);
    }, this.holdOffMs);
    timer.unref?.();
    this.pending.set(key, { snapshot, timer });
  }

  /**
   * Resources made on demand: when a stream subscribes names of a type the live snapshot lacks, the
   * resolver (the control plane) may publish them synchronously (`setNow`) before the stream
   * answers, so the client gets them in the same response instead of a "does not exist". Used for
   * per-SNI leaves requested by Envoy's on-demand certificate selector.
   */
  private missingResolver?: (key: string, typeUrl: XdsTypeUrl, names: readonly string[]) => void;

  onMissing(resolver: (key: string, typeUrl: XdsTypeUrl, names: readonly string[]) => void): void {
    this.missingResolver = resolver;
  }

  /** Called by streams with requested names the live snapshot for `key` lacks. Never throws. */
  resolveMissing(key: string, typeUrl: XdsTypeUrl, names: readonly string[]): void {
    if (!this.missingResolver || names.length === 0) return;
    try {
      this.missingResolver(key, typeUrl, names);
    } catch {
      // a resolver failure leaves the names missing, as if there were no resolver
    }
  }

  /** Publish now, bypassing the hold-off (used at start-up, before Envoy connects). */
  setNow(key: string, snapshot: Snapshot): void {
    const p = this.pending.get(key);
    if (p) {
      clearTimeout(p.timer);
      this.pending.delete(key);
    }
    this.commit(key, snapshot);
  }

  /** Flush any pending publish immediately (tests, shutdown). */
  flush(): void {
    for (const [key, p] of [...this.pending]) {
      clearTimeout(p.timer);
      this.pending.delete(key);
      this.commit(key, p.snapshot);
    }
  }

  private commit(key: string, snapshot: Snapshot): void {
    const prev = this.live.get(key);
    if (prev && prev.version === snapshot.version) return;
    this.live.set(key, snapshot);
    this.ee.emit('update', key, snapshot);
  }

  delete(key: string): void {
    this.live.delete(key);
    this.ee.emit('update', key, undefined);
  }

  /** The key a node resolves to, or undefined when the node is unknown. */
  resolve(node: NodeIdentity): string | undefined {
    if (this.live.has(node.id) || this.pending.has(node.id)) return node.id;
    if (node.cluster) {
      const k = SnapshotCache.keyForCluster(node.cluster);
      if (this.live.has(k) || this.pending.has(k)) return k;
    }
    return undefined;
  }

  get(key: string): Snapshot | undefined {
    return this.live.get(key);
  }

  keys(): string[] {
    return [...this.live.keys()];
  }

  /** Subscribe to committed snapshots; returns an unsubscribe function. */
  onUpdate(fn: (key: string, snapshot: Snapshot | undefined) => void): () => void {
    this.ee.on('update', fn);
    return () => this.ee.off('update', fn);
  }

  /** Called by the streams on every ACK; observers (benchmarks, `up`) learn what Envoy applied. */
  recordAck(key: string, nodeId: string, typeUrl: XdsTypeUrl, version: string): void {
    this.ee.emit('ack', { key, nodeId, typeUrl, version });
  }

  onAck(fn: (a: { key: string; nodeId: string; typeUrl: XdsTypeUrl; version: string }) => void): () => void {
    this.ee.on('ack', fn);
    return () => this.ee.off('ack', fn);
  }

  recordNack(rec: NackRecord): void {
    let byType = this.nacks.get(rec.key);
    if (!byType) this.nacks.set(rec.key, (byType = new Map()));
    let byVersion = byType.get(rec.typeUrl);
    if (!byVersion) byType.set(rec.typeUrl, (byVersion = new Map()));
    byVersion.set(rec.version, rec);
  }

  isNacked(key: string, typeUrl: XdsTypeUrl, version: string): boolean {
    return this.nacks.get(key)?.get(typeUrl)?.has(version) ?? false;
  }

  /** Every NACK recorded, newest last. */
  nackHistory(): NackRecord[] {
    const out: NackRecord[] = [];
    for (const byType of this.nacks.values()) for (const byV of byType.values()) out.push(...byV.values());
    return out.sort((a, b) => a.at.getTime() - b.at.getTime());
  }

  close(): void {
    for (const p of this.pending.values()) clearTimeout(p.timer);
    this.pending.clear();
    this.ee.removeAllListeners();
  }
}
