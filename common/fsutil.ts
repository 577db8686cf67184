import { constants as FS } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';

/**
 * Write a file atomically: a fresh temporary file in the same directory created with `mode`
 * (O_EXCL | O_NOFOLLOW, so never a pre-existing file or a link with other permissions), written,
 * fsynced, renamed over the target, then the directory is fsynced. Used for every key, state and
 * journal file that must never be seen half-written or with a wider mode.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode: number): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(tmp, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, mode);
  try {
    await fh.chmod(mode); // the umask may have removed bits we asked for; it never adds any
    await fh.writeFile(data);
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  try {
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  await syncDir(dirname(path));
}

/** fsync a directory (best effort: not every filesystem supports it). */
export async function syncDir(dir: string): Promise<void> {
  try {
    const d = await open(dir, FS.O_RDONLY);
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    // best effort
  }
}
