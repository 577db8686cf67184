import { appendFileSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Journal } from './journal.js';
import { tempDir } from './testkit.js';

describe('journal', () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => cleanups.splice(0).forEach((c) => c()));

  it('appends are durable and read back in order; the file is 0600', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const file = join(t.dir, 'sub', 'j.jsonl');
    const { journal } = await Journal.open<{ n: number }>(file);
    await Promise.all([journal.append({ n: 1 }), journal.append({ n: 2 }, { n: 3 })]);
    await journal.close();
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const again = await Journal.open<{ n: number }>(file);
    expect(again.records).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }]);
    expect(again.torn).toBe(false);
    await again.journal.close();
  });

  it('a torn last line (crash mid-write) is dropped and cut off at open', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const file = join(t.dir, 'j.jsonl');
    const { journal } = await Journal.open<{ n: number }>(file);
    await journal.append({ n: 1 });
    await journal.close();
    appendFileSync(file, '{"n":2');
    const r = await Journal.open<{ n: number }>(file);
    expect(r.records).toEqual([{ n: 1 }]);
    expect(r.torn).toBe(true);
    await r.journal.append({ n: 3 });
    await r.journal.close();
    expect(readFileSync(file, 'utf8')).toBe('{"n":1}\n{"n":3}\n');
  });

  it('compaction is ordered with the appends around it', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const file = join(t.dir, 'j.jsonl');
    const { journal } = await Journal.open<{ n: number }>(file);
    const a = journal.append({ n: 1 });
    const c = journal.compact([{ n: 10 }]);
    const b = journal.append({ n: 2 });
    await Promise.all([a, b, c]);
    expect(readFileSync(file, 'utf8')).toBe('{"n":10}\n{"n":2}\n');
    expect(journal.lines).toBe(2);
    await journal.close();
    await expect(journal.append({ n: 3 })).rejects.toThrow(/closed/);
  });
});
