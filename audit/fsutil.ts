import { lstat, mkdir } from 'node:fs/promises';
import { syncDir, writeFileAtomic } from '../common/fsutil.js';

export { syncDir, writeFileAtomic };

/** Create `dir` with mode 0700 if it does not exist (parents as needed). */
export async function ensureDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await lstat(dir);
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
}

export async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}
