import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { inspect } from 'node:util';
import type { Logger } from '../common/logger.js';
import type { EventSink } from '../common/events.js';
import { CaStore, constraintsForHosts, type CaInfo, type Clock } from './ca.js';
import { LeafCache, DEFAULT_REFRESH_FRACTION } from './cache.js';
import { MintRefusedError, type MintRefusalReason } from './errors.js';
import { DEFAULT_LEAF_TTL_MS, MIN_LEAF_LIFETIME_MS, issueLeaf, type Leaf } from './leaf.js';
import { allowListPolicy, displayName, parseName, sanCovers, type MintPolicy, type ParsedName } from './names.js';
import {
  CA_BUNDLE_SECRET_NAME,
  caBundleSecret,
  leafNameFromSecret,
  leafSecret,
  leafSecretName,
  type SdsSecret,
  type TlsCertificateSecret,
  type ValidationContextSecret,
} from './secrets.js';

export const DEFAULT_CA_RENEW_BEFORE_MS = 30 * 24 * 3600_000;
export const DEFAULT_ROTATION_OVERLAP_MS = 48 * 3600_000;
export const DEFAULT_TICK_INTERVAL_MS = 60_000;
/** Requested names remembered per leaf (names under one wildcard leaf); oldest dropped beyond this. */
const MAX_ALIASES_PER_LEAF = 1024;

export interface MinterOptions {
  /** the CA lives in `<dataDir>/ca` */
  dataDir: string;
  /** deployment id (CA subject `Portcullis deployment CA <id>`) */
  deploymentId: string;
  /** bump-rung policy: a predicate, or the list of bump-rung hosts (`allowListPolicy`) */
  policy: MintPolicy | readonly string[];
  logger: Logger;
  events?: EventSink;
  clock?: Clock;
  /** leaf lifetime (default 12 h; capped at the CA's notAfter) */
  leafTtlMs?: number;
  /** re-mint when this fraction of a leaf's lifetime is left (default 1/3) */
  refreshFraction?: number;
  /** validity of a CA generation (default 1 year) */
  caValidityMs?: number;
  /** rotate automatically when the current CA has less than this left (default 30 days) */
  caRenewBeforeMs?: number;
  /** how long a replaced CA stays in the trust bundle (default 48 h; keep it above the leaf TTL) */
  rotationOverlapMs?: number;
  /** put the policy's bump hosts in each new CA generation as name constraints (default false) */
  nameConstraints?: boolean;
}

export interface MinterEvents {
  /** SDS secret names whose content changed (leaf re-minted or dropped, trust bundle changed) */
  changed: [secretNames: string[]];
}

export interface MinterStatus {
  deploymentId: string;
  current: CaInfo;
  retiring: (CaInfo & { overlapEndsAt: string }) | null;
  leaves: number;
  leafTtlMs: number;
}

function toPolicy(p: MintPolicy | readonly string[]): MintPolicy {
  return Array.isArray(p) ? allowListPolicy(p as readonly string[]) : (p as MintPolicy);
}

/**
 * Mints, caches and re-mints per-SNI leaf certificates from the deployment CA, and hands them out
 * as SDS secrets. A leaf is only ever issued for a name the policy allows at a bump rung.
 */
export class Minter extends EventEmitter<MinterEvents> {
  readonly #policy: { current: MintPolicy };
  readonly #store: CaStore;
  readonly #cache: LeafCache;
  /** leaf name → names it was requested for (SNIs under a wildcard leaf, or the name itself) */
  readonly #aliases = new Map<string, Set<string>>();
  #timer: NodeJS.Timeout | null = null;
  #ticking: Promise<void> | null = null;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly leafTtlMs: number;

  private constructor(
    private readonly opts: MinterOptions,
    store: CaStore,
    policy: { current: MintPolicy },
  ) {
    super();
    this.#policy = policy;
    this.#store = store;
    this.clock = opts.clock ?? Date.now;
    this.log = opts.logger.child({ component: 'sds-minter' });
    this.leafTtlMs = opts.leafTtlMs ?? DEFAULT_LEAF_TTL_MS;
    this.#cache = new LeafCache({ refreshFraction: opts.refreshFraction ?? DEFAULT_REFRESH_FRACTION, clock: this.clock });
    this.#cache.on('changed', (names) => this.emit('changed', this.secretNamesFor(names)));
  }

  /**
   * Load (or create) the CA, finish an overlap that has ended, rotate a CA that is about to expire,
   * and mint the exact bump hosts.
   */
  static async open(opts: MinterOptions): Promise<Minter> {
    const ttl = opts.leafTtlMs ?? DEFAULT_LEAF_TTL_MS;
    if (!(ttl >= MIN_LEAF_LIFETIME_MS)) throw new RangeError(`leafTtlMs must be at least ${MIN_LEAF_LIFETIME_MS} ms`);
    // shared with the store, which derives name constraints from the live policy at each rotation
    const policy = { current: toPolicy(opts.policy) };
    const store = await CaStore.open({
      dir: join(opts.dataDir, 'ca'),
      deploymentId: opts.deploymentId,
      logger: opts.logger,
      events: opts.events,
      clock: opts.clock,
      validityMs: opts.caValidityMs,
      nameConstraints: opts.nameConstraints
        ? () => constraintsForHosts(policy.current.bumpHosts?.() ?? [])
        : undefined,
    });
    const minter = new Minter(opts, store, policy);
    // an overlap that ended while stopped, or a CA close to expiry, is dealt with before serving
    await minter.tick();
    minter.prewarm();
    return minter;
  }

  // -------------------------------------------------------------------------------------------
  // Leaves and secrets
  // -------------------------------------------------------------------------------------------

  /**
   * The leaf for `name` (an SNI, an IP literal, or a wildcard the policy allows): cached while
   * fresh, minted otherwise. Throws `MintRefusedError` when the policy does not allow it.
   */
  leaf(name: string): Leaf {
    const now = this.clock();
    const { requested, san } = this.resolve(name);
    const cached = this.#cache.get(san.name, now);
    this.addAlias(san.name, requested);
    if (cached !== undefined && this.servable(cached, now)) return cached;
    const leaf = this.mint(san, now);
    this.#cache.set(leaf);
    return leaf;
  }

  /**
   * The SDS secret for a requested secret name: `leaf:<name>` (named as requested, e.g.
   * `leaf:a.example.com` carries the `*.example.com` leaf) or the CA bundle secret.
   */
  secret(secretName: string): SdsSecret {
    if (secretName === CA_BUNDLE_SECRET_NAME) return this.caBundleSecret();
    const name = leafNameFromSecret(secretName);
    if (name === null) throw this.refuse('invalid_name', secretName);
    return this.leafSecret(name);
  }

  /** `tls_certificate` secret named `leaf:<name>` for the leaf serving `name`. */
  leafSecret(name: string): TlsCertificateSecret {
    const leaf = this.leaf(name);
    const secret = leafSecret(leaf);
    secret.name = leafSecretName(name);
    return secret;
  }

  /** PEM trust bundle for sandbox trust stores: every active CA generation. */
  bundlePem(): string {
    return this.#store.bundlePem();
  }

  /** PEM of the CA generation that signs new leaves. */
  caCertPem(): string {
    return this.#store.current.certPem;
  }

  caBundleSecret(): ValidationContextSecret {
    return caBundleSecret(this.#store.bundlePem());
  }

  /** Mint the policy's exact bump hosts (and IPs) ahead of time; returns the leaf names minted. */
  prewarm(): string[] {
    const now = this.clock();
    const minted: Leaf[] = [];
    for (const host of this.#policy.current.bumpHosts?.() ?? []) {
      const p = parseName(host);
      if (p === null || p.kind === 'wildcard') continue;
      try {
        const { requested, san } = this.resolve(p.name);
        this.addAlias(san.name, requested);
        const cached = this.#cache.get(san.name, now);
        if (cached !== undefined && this.servable(cached, now)) continue;
        if (minted.some((l) => l.name === san.name)) continue;
        minted.push(this.mint(san, now));
      } catch (e) {
        if (!(e instanceof MintRefusedError)) throw e;
      }
    }
    this.#cache.setMany(minted);
    if (minted.length > 0) this.log.info({ count: minted.length }, 'leaves minted ahead of time');
    return minted.map((l) => l.name);
  }

  /** Whether the current policy allows a leaf for `name` (no mint, no side effect). */
  allows(name: string): boolean {
    return this.#policy.current.isAllowed(name).allowed;
  }

  /**
   * Replace the policy. Cached leaves the new policy no longer allows are dropped at once (a
   * `changed` notification follows), then the new exact hosts are minted.
   */
  setPolicy(policy: MintPolicy | readonly string[]): void {
    this.#policy.current = toPolicy(policy);
    const dropped: string[] = [];
    for (const leafName of this.#cache.names()) {
      if (this.stillAllowed(leafName).length === 0) dropped.push(leafName);
    }
    this.#cache.delete(dropped);
    for (const n of dropped) this.#aliases.delete(n);
    if (dropped.length > 0) this.log.info({ dropped }, 'leaves dropped after policy change');
    const nc = this.#store.current.nameConstraints;
    if (nc !== null) {
      const outside = (this.#policy.current.bumpHosts?.() ?? []).filter((h) => {
        const p = parseName(h);
        return p !== null && !this.#store.current.permits(p.name);
      });
      if (outside.length > 0) {
        this.log.warn(
          { hosts: outside.map(displayName) },
          'bump hosts outside the CA name constraints: they are refused until the CA is rotated',
        );
      }
    }
    this.prewarm();
  }

  // -------------------------------------------------------------------------------------------
  // Time-driven work: refresh, rotation, retirement
  // -------------------------------------------------------------------------------------------

  /**
   * One round of background work at the clock's `now`: finish an overlap that has ended, rotate a
   * CA close to expiry, re-mint leaves in their refresh window or signed by an inactive CA.
   */
  tick(): Promise<void> {
    if (this.#ticking !== null) return this.#ticking;
    this.#ticking = this.tickOnce().finally(() => {
      this.#ticking = null;
    });
    return this.#ticking;
  }

  private async tickOnce(): Promise<void> {
    const retiring = this.#store.retiring;
    if (retiring !== null && this.clock() >= retiring.overlapEndsAt.getTime()) await this.retire();
    if (this.caRenewalDue(this.clock())) await this.rotate('CA close to expiry');
    this.refresh();
  }

  /** Re-mint the leaves that are due (refresh window, expired, or CA no longer active). */
  refresh(): string[] {
    const now = this.clock();
    const active = new Set(this.#store.active().map((g) => g.generation));
    const due = new Set(this.#cache.refreshDue(now));
    for (const l of this.#cache.leaves()) if (!active.has(l.generation)) due.add(l.name);
    const reminted: Leaf[] = [];
    const dropped: string[] = [];
    for (const leafName of due) {
      const san = parseName(leafName);
      if (san === null || this.stillAllowed(leafName).length === 0 || !this.#store.current.permits(leafName)) {
        dropped.push(leafName);
        continue;
      }
      try {
        reminted.push(this.mint(san, now));
      } catch (e) {
        this.log.error({ name: leafName, err: (e as Error).message }, 'leaf re-mint failed');
      }
    }
    this.#cache.delete(dropped);
    for (const n of dropped) this.#aliases.delete(n);
    this.#cache.setMany(reminted);
    return reminted.map((l) => l.name);
  }

  /** Rotate now: a new CA generation signs all new leaves; the old one stays trusted for the overlap. */
  async rotate(reason = 'requested'): Promise<CaInfo> {
    const gen = await this.#store.rotate(this.opts.rotationOverlapMs ?? DEFAULT_ROTATION_OVERLAP_MS, reason);
    this.emit('changed', [CA_BUNDLE_SECRET_NAME]);
    return gen.info();
  }

  /** End the overlap now: the old CA leaves the bundle, its key file is deleted, its leaves are re-minted. */
  async retire(): Promise<void> {
    const retired = await this.#store.retire();
    if (retired === null) return;
    this.emit('changed', [CA_BUNDLE_SECRET_NAME]);
    this.refresh();
  }

  /** Run `tick()` every `intervalMs` (timer unref'd). */
  start(intervalMs = DEFAULT_TICK_INTERVAL_MS): void {
    if (this.#timer !== null) return;
    this.#timer = setInterval(() => {
      this.tick().catch((e: unknown) => this.log.error({ err: (e as Error).message }, 'minter tick failed'));
    }, intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  status(): MinterStatus {
    const r = this.#store.retiring;
    return {
      deploymentId: this.opts.deploymentId,
      current: this.#store.current.info(),
      retiring: r ? { ...r.ca.info(), overlapEndsAt: r.overlapEndsAt.toISOString() } : null,
      leaves: this.#cache.size,
      leafTtlMs: this.leafTtlMs,
    };
  }

  /** Leaf names currently cached. */
  cachedNames(): string[] {
    return this.#cache.names();
  }

  toJSON(): MinterStatus {
    return this.status();
  }

  [inspect.custom](): string {
    return `Minter ${inspect(this.status(), { depth: 4 })}`;
  }

  // -------------------------------------------------------------------------------------------
  // Internals
  // -------------------------------------------------------------------------------------------

  /** Policy gate: canonical requested name and the leaf name that serves it, or a refusal. */
  private resolve(raw: string): { requested: string; san: ParsedName } {
    const req = parseName(raw);
    if (req === null) throw this.refuse('invalid_name', raw);
    let decision;
    try {
      decision = this.#policy.current.isAllowed(req.name);
    } catch (e) {
      this.log.error({ name: req.name, err: (e as Error).message }, 'mint policy threw; refusing');
      throw this.refuse('not_allowed', req.name);
    }
    if (decision?.allowed !== true) throw this.refuse('not_allowed', req.name);
    const san = parseName(decision.san ?? req.name);
    if (san === null || !sanCovers(san.name, req.name)) throw this.refuse('san_mismatch', req.name);
    if (!this.#store.current.permits(san.name)) throw this.refuse('outside_ca_name_constraints', req.name);
    return { requested: req.name, san };
  }

  /** Requested names of a cached leaf that the current policy still maps to it. */
  private stillAllowed(leafName: string): string[] {
    const names = this.#aliases.get(leafName) ?? new Set([leafName]);
    const keep: string[] = [];
    for (const n of names) {
      try {
        const d = this.#policy.current.isAllowed(n);
        const san = d?.allowed === true ? parseName(d.san ?? n) : null;
        if (san !== null && san.name === leafName) keep.push(n);
      } catch {
        // a throwing policy allows nothing
      }
    }
    if (this.#aliases.has(leafName)) this.#aliases.set(leafName, new Set(keep));
    return keep;
  }

  private servable(leaf: Leaf, now: number): boolean {
    if (this.#cache.isRefreshDue(leaf, now)) return false;
    return this.#store.active().some((g) => g.generation === leaf.generation);
  }

  private mint(san: ParsedName, now: number): Leaf {
    const leaf = issueLeaf(this.#store.current, san, { now, ttlMs: this.leafTtlMs });
    this.log.debug({ leaf: leaf.info() }, 'leaf minted');
    this.opts.events?.emit({
      type: 'leaf.minted',
      severity: 'info',
      source: 'sds-minter',
      time: new Date(now).toISOString(),
      data: {
        name: leaf.name,
        serialNumber: leaf.serialNumber,
        notAfter: leaf.notAfter.toISOString(),
        generation: leaf.generation,
      },
    });
    return leaf;
  }

  private refuse(reason: MintRefusalReason, raw: string): MintRefusedError {
    const name = displayName(raw);
    this.log.warn({ name, reason }, 'leaf mint refused');
    this.opts.events?.emit({
      type: 'mint.refused',
      severity: 'warning',
      source: 'sds-minter',
      time: new Date(this.clock()).toISOString(),
      data: { name, reason },
    });
    return new MintRefusedError(reason, name);
  }

  private addAlias(leafName: string, requested: string): void {
    let set = this.#aliases.get(leafName);
    if (set === undefined) {
      set = new Set();
      this.#aliases.set(leafName, set);
    }
    if (set.has(requested)) return;
    set.add(requested);
    if (set.size > MAX_ALIASES_PER_LEAF) set.delete(set.values().next().value as string);
  }

  private secretNamesFor(leafNames: readonly string[]): string[] {
    const out = new Set<string>();
    for (const n of leafNames) {
      out.add(leafSecretName(n));
      for (const a of this.#aliases.get(n) ?? []) out.add(leafSecretName(a));
    }
    return [...out];
  }

  private caRenewalDue(now: number): boolean {
    if (this.#store.retiring !== null) return false;
    const renewBefore = this.opts.caRenewBeforeMs ?? DEFAULT_CA_RENEW_BEFORE_MS;
    return now >= this.#store.current.notAfter.getTime() - renewBefore;
  }
}
