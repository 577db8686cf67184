import { constants as FS } from 'node:fs';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ensureDir, writeFileAtomic } from '../audit/fsutil.js';

/**
 * An append-only JSON-lines file with group commit: `append` queues records; one loop writes
 * everything queued in one `write` and one `fdatasync`, then resolves every waiter of the batch.
 * A promise returned by `append` resolves only once its record is on stable storage. A torn last
 * line (a crash mid-write) is ignored on read and cut off by the next `compact`. The operator plane
 * keeps its SOAR outbox, the admin replay cache and the denylist in journals.
 */
export class Journal<T> {
  private queue: Op[] = [];
  private loop: Promise<void> | null = null;
  private fh: FileHandle | null = null;
  private closed = false;
  /** records in the file (read at open, appended, or written by the last compaction) */
  lines = 0;

  private constructor(readonly path: string) {}

  /** Open (creating it 0600, its directory 0700) and return the journal and the records it holds. */
  static async open<T>(path: string): Promise<{ journal: Journal<T>; records: T[]; torn: boolean }> {
    await ensureDir(dirname(path));
    const j = new Journal<T>(path);
    const { records, torn } = await readJournal<T>(path);
    if (torn) await writeFileAtomic(path, serialize(records), 0o600);
    j.fh = await open(path, FS.O_WRONLY | FS.O_APPEND | FS.O_CREAT | FS.O_NOFOLLOW, 0o600);
    j.lines = records.length;
    return { journal: j, records, torn };
  }

  append(...records: T[]): Promise<void> {
    if (this.closed) return Promise.reject(new Error(`journal ${this.path} is closed`));
    if (records.length === 0) return Promise.resolve();
    return this.enqueue({ kind: 'lines', text: serialize(records), n: records.length });
  }

  /**
   * Replace the whole file (atomically) with `records`, in order with the appends: everything
   * appended before this call is written first, everything after goes behind the new content. The
   * caller's `records` must therefore already include what it appended before and still needs.
   */
  compact(records: readonly T[]): Promise<void> {
    if (this.closed) return Promise.reject(new Error(`journal ${this.path} is closed`));
    return this.enqueue({ kind: 'compact', text: serialize(records), n: records.length });
  }

  async close(): Promise<void> {
    this.closed = true;
    while (this.loop !== null) await this.loop;
    await this.fh?.close().catch(() => undefined);
    this.fh = null;
  }

  private enqueue(op: Omit<Op, 'resolve' | 'reject'>): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ ...op, resolve, reject });
      this.kick();
    });
  }

  private kick(): void {
    if (this.loop !== null) return;
    this.loop = this.flush().finally(() => {
      this.loop = null;
      if (this.queue.length > 0) this.kick();
    });
  }

  private async flush(): Promise<void> {
    while (this.queue.length > 0) {
      // let every append of this turn of the event loop join the batch
      await new Promise<void>((r) => setImmediate(r));
      const first = this.queue[0]!;
      if (first.kind === 'compact') {
        this.queue.shift();
        try {
          await this.fh?.close().catch(() => undefined);
          this.fh = null;
          await writeFileAtomic(this.path, first.text, 0o600);
          this.lines = first.n;
          first.resolve();
        } catch (e) {
          first.reject(e as Error);
        } finally {
          this.fh ??= await open(this.path, FS.O_WRONLY | FS.O_APPEND | FS.O_CREAT | FS.O_NOFOLLOW, 0o600).catch(() => null);
        }
        continue;
      }
      let n = 0;
      while (n < this.queue.length && this.queue[n]!.kind === 'lines') n++;
      const batch = this.queue.splice(0, n);
      try {
        if (!this.fh) throw new Error(`journal ${this.path} is not open`);
        await this.fh.write(batch.map((b) => b.text).join(''));
        await this.fh.datasync();
      } catch (e) {
        for (const b of batch) b.reject(e as Error);
        continue;
      }
      for (const b of batch) {
        this.lines += b.n;
        b.resolve();
      }
    }
  }
}

interface Op {
  kind: 'lines' | 'compact';
  text: string;
  n: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

function serialize(records: readonly unknown[]): string {
  return records.map((r) => `${JSON.stringify(r)}\n`).join('');
}

async function readJournal<T>(path: string): Promise<{ records: T[]; torn: boolean }> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { records: [], torn: false };
    throw e;
  }
  const records: T[] = [];
  let torn = false;
  const lines = text.split('\n');
  const last = lines.pop();
  if (last !== undefined && last !== '') torn = true;
  for (const l of lines) {
    if (l === '') continue;
    try {
      records.push(JSON.parse(l) as T);
    } catch {
      torn = true;
    }
  }
  return { records, torn };
}
