import { createHash, randomBytes } from 'node:crypto';
import { constants as FS } from 'node:fs';
import { open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import type { EventBus, PortcullisEvent } from '../common/events.js';
import type { Logger } from '../common/logger.js';
import { canonical } from './canonical.js';
import {
  buildRecord,
  ChainChecker,
  compareWindow,
  FORMAT,
  GENESIS_PREV,
  MERKLE_ALG,
  merkleRoot,
  readLines,
  short,
  type CheckpointStatement,
  type Failure,
  type HeaderBody,
  type RecordType,
  type SealBody,
} from './chain.js';
import { AuditEventInvalidError, AuditLogCorruptError, AuditWriteError } from './errors.js';
import { ensureDir, exists, writeFileAtomic } from './fsutil.js';
import { formatHeadSidecar, headSidecarPath, nodeAuditIo, readHeadSidecar, type AppendFile, type AuditIo, type HeadSidecar } from './io.js';
import { exportJwks, loadOrCreateSigningKey, signCheckpoint, type AuditSigningKey } from './keys.js';
import { checkEnvelope, fromPortcullisEvent, OCSF_SCHEMA_VERSION, type OcsfEvent } from './ocsf.js';

export const AUDIT_LOG_FILE = 'audit.jsonl';
export const DEFAULT_CHECKPOINT_EVERY = 1000;
export const DEFAULT_CHECKPOINT_INTERVAL_MS = 60_000;
export const DEFAULT_MAX_BATCH_BYTES = 1 << 20;
export const MAX_EVENT_BYTES = 256 * 1024;

export interface AuditWriterOptions {
  /** directory for the log, its sidecars, the signing key and the JWKS (created 0700) */
  dataDir: string;
  logger: Logger;
  /** log file name inside dataDir (default `audit.jsonl`) */
  fileName?: string;
  /** write a signed checkpoint after this many records (default 1000) */
  checkpointEvery?: number;
  /** and at least this often while records are pending a checkpoint (default 60 s; 0 = off) */
  checkpointIntervalMs?: number;
  /** cap on the bytes of one group commit (default 1 MiB) */
  maxBatchBytes?: number;
  /** check every appended event against the OCSF envelope schema (default true) */
  validate?: boolean;
  clock?: () => number;
  io?: AuditIo;
  /** default: loaded from / created in dataDir */
  signingKey?: AuditSigningKey;
}

export interface AppendResult {
  seq: number;
  hash: string;
}

/** What `open` found and repaired. */
export interface RecoveryInfo {
  truncatedAt: number;
  tornBytes: number;
  tornFile: string;
  detail: string;
  sealSeq: number;
}

export interface AuditWriterStats {
  appended: number;
  rejected: number;
  commits: number;
  checkpoints: number;
  busEvents: number;
  busFailures: number;
  sidecarFailures: number;
}

interface Pending {
  type: Exclude<RecordType, 'header'>;
  /** canonical body; null for a checkpoint (built when its turn comes) */
  bodyC: string | null;
  resolve: (r: AppendResult | null) => void;
  reject: (e: Error) => void;
}

const openPaths = new Set<string>();

/**
 * The one writer of the audit log (control plane). Appends are queued and group-committed: one
 * `write` and one `fdatasync` per batch, after which every waiter of the batch resolves; a promise
 * returned by `append` resolves only once its record is on disk. Any write failure rejects the
 * batch and everything queued with `audit_write_failed` and leaves the writer refusing all further
 * appends (fail closed); a new `open` repairs the tail and continues.
 */
export class AuditWriter {
  readonly path: string;
  readonly headPath: string;
  readonly dataDir: string;
  readonly jwksPath: string;
  readonly logId: string;
  readonly kid: string;
  private recoveryInfo: RecoveryInfo | null = null;

  private nextSeq: number;
  private prevHash: string;
  private leaves: Buffer[];
  private windowStart: number;
  private queue: Pending[] = [];
  private loop: Promise<void> | null = null;
  private broken: AuditWriteError | null = null;
  private closing = false;
  private closed = false;
  private timer: NodeJS.Timeout | null = null;
  private sidecarNext: HeadSidecar | null = null;
  private sidecarLoop: Promise<void> | null = null;
  private readonly stat: AuditWriterStats = { appended: 0, rejected: 0, commits: 0, checkpoints: 0, busEvents: 0, busFailures: 0, sidecarFailures: 0 };
  private readonly checkpointEvery: number;
  private readonly maxBatchBytes: number;
  private readonly validate: boolean;
  private readonly clock: () => number;
  private readonly io: AuditIo;
  private readonly log: Logger;

  private constructor(
    init: { path: string; dataDir: string; jwksPath: string; logId: string; checker: ChainChecker },
    private readonly file: AppendFile,
    private readonly key: AuditSigningKey,
    private readonly releaseLock: () => Promise<void>,
    opts: AuditWriterOptions,
    log: Logger,
  ) {
    this.path = init.path;
    this.headPath = headSidecarPath(init.path);
    this.dataDir = init.dataDir;
    this.jwksPath = init.jwksPath;
    this.logId = init.logId;
    this.kid = key.kid;
    this.nextSeq = init.checker.nextSeq;
    this.prevHash = init.checker.lastHash;
    this.leaves = init.checker.leaves;
    this.windowStart = init.checker.windowStart;
    this.checkpointEvery = Math.max(1, opts.checkpointEvery ?? DEFAULT_CHECKPOINT_EVERY);
    this.maxBatchBytes = Math.max(4096, opts.maxBatchBytes ?? DEFAULT_MAX_BATCH_BYTES);
    this.validate = opts.validate ?? true;
    this.clock = opts.clock ?? Date.now;
    this.io = opts.io ?? nodeAuditIo;
    this.log = log;
  }

  /** Open (or create) the log in `opts.dataDir`, repairing a torn tail left by a crash. */
  static async open(opts: AuditWriterOptions): Promise<AuditWriter> {
    const log = opts.logger.child({ component: 'audit' });
    const clock = opts.clock ?? Date.now;
    const io = opts.io ?? nodeAuditIo;
    const dataDir = resolve(opts.dataDir);
    const path = join(dataDir, opts.fileName ?? AUDIT_LOG_FILE);
    if (openPaths.has(path)) throw new AuditWriteError(`audit log ${path} is already open in this process`);
    openPaths.add(path);
    let releaseLock: () => Promise<void>;
    try {
      await ensureDir(dataDir);
      releaseLock = await acquireLock(path);
    } catch (e) {
      openPaths.delete(path);
      if (e instanceof AuditWriteError) throw e;
      throw new AuditWriteError(`cannot create audit data dir ${dataDir}: ${(e as Error).message}`, { cause: e, details: { path: dataDir } });
    }
    let file: AppendFile | null = null;
    try {
      const key = opts.signingKey ?? (await loadOrCreateSigningKey(dataDir, log));
      const jwksPath = await exportJwks(dataDir, key);
      const headPath = headSidecarPath(path);
      await removeStaleTemps(dataDir, basename(path));
      const sidecar = await readHeadSidecar(headPath);
      if (!(await exists(path))) {
        if (sidecar !== null) {
          throw new AuditLogCorruptError(
            `audit log ${path} is missing but ${headPath} records seq ${sidecar.seq}: the log was deleted or moved. ` +
              'Restore it, or move the .head file aside to start a new log.',
            { details: { path, sidecarSeq: sidecar.seq } },
          );
        }
        await createLog(path, clock, io);
        log.info({ path }, 'created audit log');
      }
      const scan = await scanForOpen(path, sidecar);
      const logId = scan.checker.logId!;
      file = await io.openAppend(path);
      let tail: { failure: Failure; goodEnd: number; size: number } | null = null;
      if (scan.firstBad !== null) {
        tail = { failure: scan.firstBad, goodEnd: scan.goodEnd, size: scan.size };
      }
      const writer = new AuditWriter({ path, dataDir, jwksPath, logId, checker: scan.checker }, file, key, releaseLock, opts, log);
      if (tail !== null) await writer.repairTail(tail);
      writer.startTimer(opts.checkpointIntervalMs ?? DEFAULT_CHECKPOINT_INTERVAL_MS);
      log.info({ path, seq: writer.nextSeq - 1, head: short(writer.prevHash), kid: key.kid }, 'audit log open');
      return writer;
    } catch (e) {
      await file?.close().catch(() => undefined);
      openPaths.delete(path);
      await releaseLock();
      if (e instanceof AuditLogCorruptError || e instanceof AuditWriteError) throw e;
      throw new AuditWriteError(`cannot open audit log ${path}: ${(e as Error).message}`, { cause: e, details: { path } });
    }
  }

  /** The last record written (durable once `append` resolved for it). */
  get head(): AppendResult {
    return { seq: this.nextSeq - 1, hash: this.prevHash };
  }

  /** Set when `open` cut a torn tail off the log. */
  get recovery(): RecoveryInfo | null {
    return this.recoveryInfo;
  }

  get stats(): AuditWriterStats {
    return { ...this.stat };
  }

  /** Whether appends are currently refused (after a write failure or close). */
  get failed(): boolean {
    return this.broken !== null || this.closing;
  }

  /**
   * Append an OCSF event. Resolves with its seq and hash after the batch holding it is written
   * and fdatasync'ed; rejects with `audit_write_failed` if that did not happen (nothing may be
   * assumed recorded) or `audit_event_invalid` if the event is not acceptable.
   */
  append(event: OcsfEvent): Promise<AppendResult> {
    if (this.broken !== null) {
      this.stat.rejected++;
      return Promise.reject(new AuditWriteError(`audit log unavailable after an earlier write failure: ${this.broken.message}`, { cause: this.broken }));
    }
    if (this.closing) {
      this.stat.rejected++;
      return Promise.reject(new AuditWriteError('audit writer is closed'));
    }
    let bodyC: string;
    try {
      if (this.validate) {
        const why = checkEnvelope(event);
        if (why !== null) throw new AuditEventInvalidError(`not an OCSF audit event: ${why}`);
      }
      bodyC = canonical(event);
    } catch (e) {
      this.stat.rejected++;
      return Promise.reject(e instanceof AuditEventInvalidError ? e : new AuditEventInvalidError(`event is not plain JSON: ${(e as Error).message}`, { cause: e }));
    }
    if (bodyC.length > MAX_EVENT_BYTES) {
      this.stat.rejected++;
      return Promise.reject(new AuditEventInvalidError(`event is ${bodyC.length} bytes; the limit is ${MAX_EVENT_BYTES}`));
    }
    return this.enqueue('event', bodyC) as Promise<AppendResult>;
  }

  /** Write a signed checkpoint now (null if no record is waiting for one). */
  checkpoint(): Promise<AppendResult | null> {
    if (this.broken !== null) return Promise.reject(new AuditWriteError('audit log unavailable after an earlier write failure', { cause: this.broken }));
    if (this.closed) return Promise.reject(new AuditWriteError('audit writer is closed'));
    return this.enqueue('checkpoint', null);
  }

  /**
   * Record every EventBus event (converted with `fromPortcullisEvent`). Failures are counted and
   * logged, never thrown into the emitter. Returns the unsubscribe function.
   */
  attach(bus: Pick<EventBus, 'on'>): () => void {
    return bus.on((e: PortcullisEvent) => {
      this.stat.busEvents++;
      try {
        this.append(fromPortcullisEvent(e)).catch((err: unknown) => this.busFailure(e, err));
      } catch (err) {
        this.busFailure(e, err);
      }
    });
  }

  /** Checkpoint what is pending, wait for the queue to drain, close the file, release the lock. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closing = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    if (this.broken === null && this.leaves.length > 0) {
      await this.enqueue('checkpoint', null).catch((e: unknown) => this.log.error({ err: (e as Error).message }, 'audit: final checkpoint failed'));
    }
    while (this.loop !== null) await this.loop;
    while (this.sidecarLoop !== null) await this.sidecarLoop;
    this.closed = true;
    await this.file.close().catch(() => undefined);
    openPaths.delete(this.path);
    await this.releaseLock();
    this.log.info({ path: this.path, seq: this.nextSeq - 1 }, 'audit log closed');
  }

  // -------------------------------------------------------------------------------------------

  private enqueue(type: Pending['type'], bodyC: string | null): Promise<AppendResult | null> {
    return new Promise<AppendResult | null>((resolve, reject) => {
      this.queue.push({ type, bodyC, resolve, reject });
      this.kick();
    });
  }

  private kick(): void {
    if (this.loop !== null) return;
    this.loop = this.flushLoop().finally(() => {
      this.loop = null;
      if (this.queue.length > 0) this.kick();
    });
  }

  private takeBatch(): Pending[] {
    let bytes = 0;
    let n = 0;
    while (n < this.queue.length) {
      const len = this.queue[n]!.bodyC?.length ?? 1024;
      if (n > 0 && bytes + len > this.maxBatchBytes) break;
      bytes += len + 200;
      n++;
    }
    return this.queue.splice(0, n);
  }

  private async flushLoop(): Promise<void> {
    while (this.queue.length > 0) {
      // let every append of the current turn of the event loop join this batch
      await new Promise<void>((r) => setImmediate(r));
      if (this.broken !== null) {
        this.rejectAll(this.queue.splice(0), this.broken);
        return;
      }
      const batch = this.takeBatch();
      const parts: string[] = [];
      const results: (AppendResult | null)[] = [];
      let checkpoints = 0;
      let events = 0;
      try {
        for (const p of batch) {
          if (p.type === 'checkpoint') {
            if (this.leaves.length === 0) {
              results.push(null);
              continue;
            }
            const cp = await this.checkpointRecord();
            parts.push(cp.line);
            results.push({ seq: cp.seq, hash: cp.hash });
            checkpoints++;
            continue;
          }
          const r = this.link(p.type, p.bodyC!);
          parts.push(r.line);
          results.push({ seq: r.seq, hash: r.hash });
          if (p.type === 'event') events++;
          if (this.leaves.length >= this.checkpointEvery) {
            parts.push((await this.checkpointRecord()).line);
            checkpoints++;
          }
        }
        if (parts.length > 0) {
          await this.file.write(Buffer.from(parts.join(''), 'utf8'));
          await this.file.datasync();
        }
      } catch (e) {
        this.broken = new AuditWriteError(`audit log write failed: ${(e as Error).message}`, {
          cause: e,
          details: { path: this.path, errno: (e as NodeJS.ErrnoException).code ?? null },
        });
        this.log.error({ err: (e as Error).message, code: (e as NodeJS.ErrnoException).code, path: this.path }, 'audit log write failed; refusing further appends (fail closed)');
        this.rejectAll(batch, this.broken);
        this.rejectAll(this.queue.splice(0), this.broken);
        return;
      }
      this.stat.commits++;
      this.stat.appended += events;
      this.stat.checkpoints += checkpoints;
      for (let i = 0; i < batch.length; i++) batch[i]!.resolve(results[i]!);
      this.scheduleSidecar();
    }
  }

  private rejectAll(items: Pending[], err: AuditWriteError): void {
    for (const p of items) {
      this.stat.rejected++;
      p.reject(err);
    }
  }

  private link(type: RecordType, bodyC: string): { seq: number; hash: string; line: string } {
    const r = buildRecord(this.nextSeq, type, this.prevHash, bodyC);
    this.nextSeq++;
    this.prevHash = r.hash;
    if (type !== 'checkpoint') this.leaves.push(Buffer.from(r.hash, 'hex'));
    return r;
  }

  private async checkpointRecord(): Promise<{ seq: number; hash: string; line: string }> {
    const st: CheckpointStatement = {
      log_id: this.logId,
      first_seq: this.windowStart,
      last_seq: this.nextSeq - 1,
      count: this.leaves.length,
      last_hash: this.prevHash,
      root: merkleRoot(this.leaves),
      time: this.clock(),
    };
    const jws = await signCheckpoint(this.key, st);
    const r = this.link('checkpoint', canonical({ ...st, kid: this.key.kid, jws }));
    this.leaves = [];
    this.windowStart = r.seq + 1;
    return r;
  }

  private scheduleSidecar(): void {
    this.sidecarNext = { log_id: this.logId, seq: this.nextSeq - 1, hash: this.prevHash, time: this.clock() };
    if (this.sidecarLoop !== null) return;
    this.sidecarLoop = (async () => {
      while (this.sidecarNext !== null) {
        const h = this.sidecarNext;
        this.sidecarNext = null;
        try {
          await this.io.writeSidecar(this.headPath, formatHeadSidecar(h));
        } catch (e) {
          this.stat.sidecarFailures++;
          this.log.warn({ err: (e as Error).message, path: this.headPath }, 'audit: head sidecar update failed');
        }
      }
    })().finally(() => {
      this.sidecarLoop = null;
    });
  }

  private startTimer(intervalMs: number): void {
    if (intervalMs <= 0) return;
    this.timer = setInterval(() => {
      if (this.broken === null && !this.closing && this.leaves.length > 0 && !this.queue.some((p) => p.type === 'checkpoint')) {
        this.enqueue('checkpoint', null).catch(() => undefined);
      }
    }, intervalMs);
    this.timer.unref();
  }

  private busFailure(e: PortcullisEvent, err: unknown): void {
    this.stat.busFailures++;
    this.log.error(
      { type: e.type, source: e.source, code: (err as { code?: string }).code, err: (err as Error).message },
      'audit: could not record an event from the bus',
    );
  }

  /** Cut off a torn tail (kept in `<file>.torn-<ts>`) and append a seal record saying so. */
  private async repairTail(t: { failure: Failure; goodEnd: number; size: number }): Promise<void> {
    const torn = await readRange(this.path, t.goodEnd, t.size);
    const ts = this.clock();
    let tornFile = `${basename(this.path)}.torn-${ts}`;
    for (let i = 1; await exists(join(this.dataDir, tornFile)); i++) tornFile = `${basename(this.path)}.torn-${ts}-${i}`;
    await writeFileAtomic(join(this.dataDir, tornFile), torn, 0o600);
    await this.file.truncate(t.goodEnd);
    await this.file.datasync();
    const detail = `${t.failure.reason} at line ${t.failure.line}: ${t.failure.message}`;
    const seal: SealBody = {
      reason: 'torn_tail',
      time: ts,
      truncated_at: t.goodEnd,
      torn_bytes: torn.length,
      torn_sha256: createHash('sha256').update(torn).digest('hex'),
      torn_file: tornFile,
      detail,
    };
    const r = (await this.enqueue('seal', canonical(seal))) as AppendResult;
    this.recoveryInfo = { truncatedAt: t.goodEnd, tornBytes: torn.length, tornFile, detail, sealSeq: r.seq };
    this.log.warn({ path: this.path, truncatedAt: t.goodEnd, tornBytes: torn.length, tornFile, detail, sealSeq: r.seq }, 'audit log had a torn tail; truncated and sealed');
  }
}

// ---------------------------------------------------------------------------------------------

async function createLog(path: string, clock: () => number, io: AuditIo): Promise<void> {
  const header: HeaderBody = {
    format: FORMAT,
    log_id: randomBytes(16).toString('hex'),
    created: clock(),
    hash_alg: 'sha256',
    merkle: MERKLE_ALG,
    ocsf_version: OCSF_SCHEMA_VERSION,
  };
  const r = buildRecord(0, 'header', GENESIS_PREV, canonical(header));
  await writeFileAtomic(path, r.line, 0o600);
  await io.writeSidecar(headSidecarPath(path), formatHeadSidecar({ log_id: header.log_id, seq: 0, hash: r.hash, time: clock() }));
}

interface OpenScan {
  checker: ChainChecker;
  /** byte offset just past the last good record */
  goodEnd: number;
  size: number;
  firstBad: Failure | null;
}

/**
 * Walk the log; everything after the first bad line is a candidate torn tail. A crash can only
 * tear bytes that were never acknowledged, and the head sidecar is only written for acknowledged
 * records; so if the good prefix does not reach the sidecar's record (with the same hash), the
 * damage is not a crash and the log is refused.
 */
async function scanForOpen(path: string, sidecar: HeadSidecar | null): Promise<OpenScan> {
  const checker = new ChainChecker();
  let goodEnd = 0;
  let firstBad: Failure | null = null;
  let hashAtSidecar: string | null = null;
  for await (const line of readLines(path)) {
    if (!line.terminated) {
      firstBad = { reason: 'torn_tail', seq: checker.nextSeq, line: line.lineNo, message: 'last line has no newline' };
      break;
    }
    const c = checker.check(line.text, line.lineNo);
    if (!c.ok) {
      firstBad = c.failure;
      break;
    }
    if (c.checkpoint !== undefined) {
      const why = compareWindow(c.checkpoint.statement, c.checkpoint.window, checker.logId);
      if (why !== null) {
        firstBad = { reason: 'checkpoint_root_mismatch', seq: c.record.seq, line: line.lineNo, message: why };
        break;
      }
    }
    checker.accept(c);
    goodEnd = line.end;
    if (sidecar !== null && c.record.seq === sidecar.seq) hashAtSidecar = c.record.hash;
  }
  const size = (await stat(path)).size;
  if (checker.records === 0) {
    throw new AuditLogCorruptError(`audit log ${path} has no valid header (${firstBad?.reason ?? 'empty'}: ${firstBad?.message ?? 'no records'})`, {
      details: { path },
    });
  }
  if (sidecar !== null) {
    const where = firstBad === null ? 'the log ends' : `the log is damaged from line ${firstBad.line} (${firstBad.reason})`;
    if (sidecar.log_id !== checker.logId) {
      throw new AuditLogCorruptError(`audit log ${path} has log id ${checker.logId} but its head sidecar names ${sidecar.log_id}: the log was replaced`, {
        details: { path },
      });
    }
    if (sidecar.seq > checker.nextSeq - 1) {
      throw new AuditLogCorruptError(
        `audit log ${path}: acknowledged records up to seq ${sidecar.seq} are missing (${where} after seq ${checker.nextSeq - 1}); refusing to continue it`,
        { details: { path, sidecarSeq: sidecar.seq, lastGoodSeq: checker.nextSeq - 1 } },
      );
    }
    if (hashAtSidecar !== sidecar.hash) {
      throw new AuditLogCorruptError(`audit log ${path}: record seq ${sidecar.seq} differs from the head sidecar's hash; refusing to continue it`, {
        details: { path, sidecarSeq: sidecar.seq },
      });
    }
  }
  return { checker, goodEnd, size, firstBad };
}

/** Temp files of atomic writes (head sidecar, torn copy, log creation) interrupted by a crash: `.audit.jsonl.*.tmp`. */
async function removeStaleTemps(dir: string, base: string): Promise<void> {
  const prefix = `.${base}.`;
  for (const f of await readdir(dir)) {
    if (f.startsWith(prefix) && f.endsWith('.tmp')) await rm(join(dir, f), { force: true });
  }
}

async function readRange(path: string, start: number, end: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(Math.max(0, end - start));
    let off = 0;
    while (off < buf.length) {
      const { bytesRead } = await fh.read(buf, off, buf.length - off, start + off);
      if (bytesRead === 0) break;
      off += bytesRead;
    }
    return buf.subarray(0, off);
  } finally {
    await fh.close();
  }
}

/**
 * `<log>.lock` holds the writer's pid. A lock whose pid is gone (a crashed writer) is taken over;
 * a live one is refused — two writers would fork the chain.
 */
async function acquireLock(path: string): Promise<() => Promise<void>> {
  const lockPath = `${path}.lock`;
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(lockPath, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, 0o600);
      try {
        await fh.writeFile(`${process.pid}\n`);
      } finally {
        await fh.close();
      }
      return async () => {
        await rm(lockPath, { force: true }).catch(() => undefined);
      };
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST') throw new AuditWriteError(`cannot create audit lock ${lockPath}: ${(e as Error).message}`, { cause: e, details: { path: lockPath } });
    }
    const pid = Number.parseInt((await readFile(lockPath, 'utf8').catch(() => '')).trim(), 10);
    const alive = Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && pidAlive(pid);
    if (alive) throw new AuditWriteError(`audit log ${path} is held by another writer (pid ${pid})`, { details: { path, pid } });
    await rm(lockPath, { force: true });
  }
  throw new AuditWriteError(`cannot take the audit lock ${lockPath}`, { details: { path: lockPath } });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

