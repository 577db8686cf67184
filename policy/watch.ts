import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { EventSink } from '../common/events.js';
import type { Logger } from '../common/logger.js';
import { compileLoaded } from './compile.js';
import { formatIssue, isPolicyError, PolicyError, type PolicyIssue } from './errors.js';
import { credentialFiles, irDigest, type Ir } from './ir.js';
import { loadPolicyText, readLimited } from './loader.js';

/**
 * Hot reload with last-known-good. Watches the policy file's directory (so atomic renames and
 * delete-then-recreate are seen) and the directory of every credential file the IR names.
 *
 * - A change is judged only once the file's bytes are stable across `settleMs` (partial writes do
 *   not produce refusals unless the writer stops half-way).
 * - A valid change that alters the IR emits `update` (and `config.policy_reloaded`).
 * - An invalid change emits `refused` with the exact issues, logs them, and sends a
 *   `config.reload_refused` event; `current()` keeps the last good IR. The same bad bytes are refused
 *   once, not on every event.
 * - Credential file changes emit `credentials` with the file names (never contents; files are not
 *   even read: change is detected from inode, size and mtime).
 */

export interface PolicyWatcherOptions {
  /** the policy file */
  file: string;
  logger: Logger;
  events?: EventSink;
  /** directory the policy's relative paths resolve against; default: the policy file's directory */
  baseDir?: string;
  /** name used in issues; default: `file` as given */
  displayName?: string;
  /** quiet period after the last file event before reloading; default 100 ms */
  debounceMs?: number;
  /** the bytes must be unchanged across this interval before they are judged; default 100 ms */
  settleMs?: number;
}

export interface ReloadRefusal {
  file: string;
  code: string;
  issues: readonly PolicyIssue[];
}

export type ReloadOutcome = 'updated' | 'unchanged' | 'refused';

interface WatcherEvents {
  update: [ir: Ir, info: { digest: string }];
  refused: [refusal: ReloadRefusal];
  credentials: [change: { files: string[] }];
}

const EVENT_SOURCE = 'policy';

export class PolicyWatcher extends EventEmitter<WatcherEvents> {
  private readonly file: string;
  private readonly dir: string;
  private readonly baseDir: string;
  private readonly base: string;
  private readonly display: string;
  private readonly debounceMs: number;
  private readonly settleMs: number;
  private readonly log: Logger;
  private readonly sink: EventSink | undefined;

  private ir: Ir | undefined;
  private digest: string | undefined;
  private lastRefusedBytes: string | undefined;
  private policyWatcher: fs.FSWatcher | undefined;
  private readonly credWatchers = new Map<string, fs.FSWatcher>();
  /** credential file → stat signature */
  private readonly credState = new Map<string, string>();
  private policyTimer: NodeJS.Timeout | undefined;
  private credTimer: NodeJS.Timeout | undefined;
  private readonly pendingCreds = new Set<string>();
  private running: Promise<ReloadOutcome> | undefined;
  private again = false;
  private stopped = false;

  constructor(opts: PolicyWatcherOptions) {
    super();
    this.file = path.resolve(opts.file);
    this.dir = path.dirname(this.file);
    this.baseDir = path.resolve(opts.baseDir ?? this.dir);
    this.base = path.basename(this.file);
    this.display = opts.displayName ?? opts.file;
    this.debounceMs = opts.debounceMs ?? 100;
    this.settleMs = opts.settleMs ?? 100;
    this.log = opts.logger.child({ component: 'policy-watcher', file: this.display });
    this.sink = opts.events;
  }

  /** The last good IR (undefined before a successful start). */
  current(): Ir | undefined {
    return this.ir;
  }

  /** Load the policy and start watching. Throws PolicyError when the initial policy is invalid. */
  async start(): Promise<Ir> {
    const bytes = await readLimited(this.file, this.display);
    const ir = this.compileBytes(bytes);
    this.ir = ir;
    this.digest = irDigest(ir);
    this.policyWatcher = this.watchDir(this.dir, (name) => {
      if (name === null || name === this.base) this.schedulePolicy();
    });
    this.syncCredentialWatches();
    this.log.info({ digest: this.digest, destinations: ir.egress.destinations.length }, 'policy loaded');
    return ir;
  }

  /** Stop watching. Pending timers are cancelled; `current()` keeps working. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.policyTimer);
    clearTimeout(this.credTimer);
    this.policyWatcher?.close();
    this.policyWatcher = undefined;
    for (const w of this.credWatchers.values()) w.close();
    this.credWatchers.clear();
  }

  /** Re-read the policy now (also what file events trigger). Concurrent calls are coalesced. */
  reload(): Promise<ReloadOutcome> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      let outcome: ReloadOutcome;
      do {
        this.again = false;
        outcome = await this.reloadOnce();
      } while (this.again && !this.stopped);
      return outcome;
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private compileBytes(bytes: Uint8Array): Ir {
    return compileLoaded(loadPolicyText(bytes, { file: this.display, baseDir: this.baseDir }));
  }

  private async readSettled(): Promise<{ bytes?: Uint8Array; error?: PolicyError }> {
    const read = async (): Promise<{ bytes?: Uint8Array; error?: PolicyError; key: string }> => {
      try {
        const bytes = await readLimited(this.file, this.display);
        return { bytes, key: createHash('sha256').update(bytes).digest('hex') };
      } catch (e) {
        if (isPolicyError(e)) return { error: e, key: `error:${e.code}:${e.message}` };
        throw e;
      }
    };
    let prev = await read();
    for (let i = 0; i < 50 && this.settleMs > 0; i++) {
      await new Promise((r) => setTimeout(r, this.settleMs));
      const next = await read();
      if (next.key === prev.key) return next;
      prev = next;
    }
    return prev;
  }

  private async reloadOnce(): Promise<ReloadOutcome> {
    const { bytes, error } = await this.readSettled();
    let ir: Ir;
    try {
      if (error) throw error;
      ir = this.compileBytes(bytes!);
    } catch (e) {
      const err = isPolicyError(e)
        ? e
        : new PolicyError('policy_invalid', [{ file: this.display, line: 0, col: 0, path: '', code: 'internal', message: e instanceof Error ? e.message : String(e) }]);
      const key = bytes ? createHash('sha256').update(bytes).digest('hex') : `error:${err.message}`;
      if (key === this.lastRefusedBytes) return 'refused';
      this.lastRefusedBytes = key;
      this.refuse(err);
      return 'refused';
    }
    this.lastRefusedBytes = undefined;
    const digest = irDigest(ir);
    if (digest === this.digest) {
      this.ir = ir;
      return 'unchanged';
    }
    this.ir = ir;
    this.digest = digest;
    this.syncCredentialWatches();
    this.log.info({ digest, destinations: ir.egress.destinations.length }, 'policy reloaded');
    this.sink?.emit({ type: 'config.policy_reloaded', severity: 'info', source: EVENT_SOURCE, data: { file: this.display, digest } });
    this.emit('update', ir, { digest });
    return 'updated';
  }

  private refuse(err: PolicyError): void {
    const issues = err.issues;
    const lines = issues.map(formatIssue);
    this.log.error({ code: err.code, issues: lines, keptDigest: this.digest }, 'policy change refused; last-known-good config stays live');
    this.sink?.emit({
      type: 'config.reload_refused',
      severity: 'error',
      source: EVENT_SOURCE,
      data: { file: this.display, code: err.code, issues: issues.map((i) => ({ ...i })), keptDigest: this.digest ?? null },
    });
    this.emit('refused', { file: this.display, code: err.code, issues });
  }

  private watchDir(dir: string, onName: (name: string | null) => void): fs.FSWatcher | undefined {
    try {
      const w = fs.watch(dir, { persistent: true }, (_event, name) => {
        if (!this.stopped) onName(name === null ? null : String(name));
      });
      w.on('error', (e) => this.log.warn({ dir, err: (e as Error).message }, 'file watch failed'));
      return w;
    } catch (e) {
      this.log.warn({ dir, err: (e as Error).message }, 'cannot watch directory');
      return undefined;
    }
  }

  private schedulePolicy(): void {
    clearTimeout(this.policyTimer);
    this.policyTimer = setTimeout(() => {
      this.reload().catch((e: unknown) => this.log.error({ err: e instanceof Error ? e.message : String(e) }, 'policy reload failed'));
    }, this.debounceMs);
  }

  private signature(file: string): string {
    try {
      const st = fs.statSync(file);
      return `${st.ino}:${st.size}:${st.mtimeMs}`;
    } catch {
      return 'missing';
    }
  }

  private syncCredentialWatches(): void {
    if (!this.ir || this.stopped) return;
    const files = credentialFiles(this.ir);
    const dirs = new Map<string, Set<string>>();
    for (const f of files) {
      const d = path.dirname(f);
      const set = dirs.get(d) ?? new Set<string>();
      set.add(path.basename(f));
      dirs.set(d, set);
      if (!this.credState.has(f)) this.credState.set(f, this.signature(f));
    }
    for (const f of [...this.credState.keys()]) if (!files.includes(f)) this.credState.delete(f);
    for (const [d, w] of this.credWatchers) {
      if (!dirs.has(d)) {
        w.close();
        this.credWatchers.delete(d);
      }
    }
    for (const [d, names] of dirs) {
      this.credWatchers.get(d)?.close();
      const w = this.watchDir(d, (name) => {
        const hits = name === null ? [...names] : names.has(name) ? [name] : [];
        for (const n of hits) this.pendingCreds.add(path.join(d, n));
        if (hits.length > 0) this.scheduleCredentials();
      });
      if (w) this.credWatchers.set(d, w);
    }
  }

  private scheduleCredentials(): void {
    clearTimeout(this.credTimer);
    this.credTimer = setTimeout(() => {
      const changed: string[] = [];
      for (const f of [...this.pendingCreds].sort()) {
        const sig = this.signature(f);
        if (sig !== this.credState.get(f)) {
          this.credState.set(f, sig);
          changed.push(f);
        }
      }
      this.pendingCreds.clear();
      if (changed.length === 0 || this.stopped) return;
      this.log.info({ files: changed }, 'credential files changed');
      this.sink?.emit({ type: 'config.credentials_changed', severity: 'info', source: EVENT_SOURCE, data: { files: changed } });
      this.emit('credentials', { files: changed });
    }, this.debounceMs);
  }
}
