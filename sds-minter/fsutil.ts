import { constants as FS } from 'node:fs';
import { lstat, mkdir, open } from 'node:fs/promises';
import { dirname } from 'node:path';
import { syncDir, writeFileAtomic } from '../common/fsutil.js';

export { syncDir, writeFileAtomic };
import { CaUnavailableError } from './errors.js';

const currentUid = (): number | null => (typeof process.getuid === 'function' ? process.getuid() : null);

function modeString(mode: number): string {
  return `0${(mode & 0o777).toString(8)}`;
}

/**
 * Create `dir` (mode 0700) if missing and check that it is a real directory owned by this user
 * that nobody else can read or enter. A wider mode is refused, not silently fixed: it means
 * someone else may already have read the key.
 */
export async function ensurePrivateDir(dir: string): Promise<void> {
  await mkdir(dirname(dir), { recursive: true });
  try {
    await mkdir(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new CaUnavailableError(`cannot create CA directory ${dir}`, { cause: e });
    }
  }
  const st = await lstat(dir);
  if (!st.isDirectory()) throw new CaUnavailableError(`CA directory ${dir} is not a directory`);
  const uid = currentUid();
  if (uid !== null && st.uid !== uid) {
    throw new CaUnavailableError(`CA directory ${dir} is owned by uid ${st.uid}, not by this process (uid ${uid})`);
  }
  if ((st.mode & 0o077) !== 0) {
    throw new CaUnavailableError(
      `CA directory ${dir} has mode ${modeString(st.mode)}; it must be 0700 (chmod 700 it after checking who could read it)`,
      { details: { path: dir, mode: modeString(st.mode) } },
    );
  }
}


/**
 * Read a secret file: refuses symlinks, non-regular files, files owned by another user and any
 * mode wider than 0600. The checks are made on the opened descriptor, so the file that is checked
 * is the file that is read.
 */
export async function readPrivateFile(path: string): Promise<string> {
  let fh;
  try {
    fh = await open(path, FS.O_RDONLY | FS.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ELOOP' ? 'is a symbolic link' : code === 'ENOENT' ? 'is missing' : `cannot be opened (${code})`;
    throw new CaUnavailableError(`CA key file ${path} ${why}`, { cause: code === 'ELOOP' ? undefined : e });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new CaUnavailableError(`CA key file ${path} is not a regular file`);
    const uid = currentUid();
    if (uid !== null && st.uid !== uid) {
      throw new CaUnavailableError(`CA key file ${path} is owned by uid ${st.uid}, not by this process (uid ${uid})`);
    }
    if ((st.mode & 0o077) !== 0) {
      throw new CaUnavailableError(
        `CA key file ${path} has mode ${modeString(st.mode)}; refusing to use it (must be 0600: the key may have been exposed, rotate the CA or chmod 600 it after checking)`,
        { details: { path, mode: modeString(st.mode) } },
      );
    }
    return await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
}

/** Read a public file (certificate, state); null when it does not exist. */
export async function readPublicFile(path: string): Promise<string | null> {
  let fh;
  try {
    fh = await open(path, FS.O_RDONLY | FS.O_NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new CaUnavailableError(`cannot open ${path}`, { cause: e });
  }
  try {
    return await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
}
