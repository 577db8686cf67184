import { constants as FS } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { writeFileAtomic } from './fsutil.js';
import { AuditLogCorruptError } from './errors.js';

/**
 * The file operations the writer's hot path uses, injectable so tests can make the disk fail
 * (tests run as root, where chmod does not stop a write).
 */
export interface AuditIo {
  /** open an existing log for appending (O_APPEND) */
  openAppend(path: string): Promise<AppendFile>;
  /** replace a small file atomically and durably (the head sidecar) */
  writeSidecar(path: string, data: string): Promise<void>;
}

export interface AppendFile {
  /** write all of `data` at the end of the file, or throw */
  write(data: Buffer): Promise<void>;
  /** fdatasync */
  datasync(): Promise<void>;
  truncate(len: number): Promise<void>;
  close(): Promise<void>;
}

export const nodeAuditIo: AuditIo = {
  async openAppend(path) {
    const fh = await open(path, FS.O_WRONLY | FS.O_APPEND | FS.O_NOFOLLOW);
    return {
      async write(data) {
        let off = 0;
        while (off < data.length) {
          const { bytesWritten } = await fh.write(data, off, data.length - off);
          if (bytesWritten <= 0) throw Object.assign(new Error('write wrote nothing'), { code: 'EIO' });
          off += bytesWritten;
        }
      },
      datasync: () => fh.datasync(),
      truncate: (len) => fh.truncate(len),
      close: () => fh.close(),
    };
  },
  writeSidecar: (path, data) => writeFileAtomic(path, data, 0o600),
};

/**
 * `<log>.head`: the last durably written record (seq + hash), rewritten after each group commit.
 * It only ever lags the log (it is written after the log's fsync), so a log that ends before the
 * sidecar's seq, or holds a different hash there, lost acknowledged records.
 */
export interface HeadSidecar {
  log_id: string;
  seq: number;
  hash: string;
  time: number;
}

export function headSidecarPath(logPath: string): string {
  return `${logPath}.head`;
}

export function formatHeadSidecar(h: HeadSidecar): string {
  return `${JSON.stringify({ log_id: h.log_id, seq: h.seq, hash: h.hash, time: h.time })}\n`;
}

/** null when there is none; throws AuditLogCorruptError when it exists but is not a sidecar. */
export async function readHeadSidecar(path: string): Promise<HeadSidecar | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new AuditLogCorruptError(`head sidecar ${path} is not JSON`, { details: { path } });
  }
  const o = v as Partial<HeadSidecar> | null;
  if (
    typeof o !== 'object' ||
    o === null ||
    typeof o.log_id !== 'string' ||
    !Number.isSafeInteger(o.seq) ||
    (o.seq as number) < 0 ||
    typeof o.hash !== 'string' ||
    !/^[0-9a-f]{64}$/.test(o.hash)
  ) {
    throw new AuditLogCorruptError(`head sidecar ${path} is malformed`, { details: { path } });
  }
  return { log_id: o.log_id, seq: o.seq as number, hash: o.hash, time: typeof o.time === 'number' ? o.time : 0 };
}
