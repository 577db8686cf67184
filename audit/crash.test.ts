import { spawn } from 'node:child_process';
import { appendFile, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { parseRecord } from './chain.js';
import { jwksOf, tempDir } from './testutil.js';
import { verify } from './verify.js';
import { AuditWriter } from './writer.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const t = tempDir('audit-crash-');
afterAll(() => t.cleanup());

/** Run the child, SIGKILL it once `killAfter` ACKs arrived; return every ACK it printed. */
async function burstAndKill(dir: string, killAfter: number): Promise<Map<number, string>> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'audit/testdata/crash-child.ts', dir], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  const acks = new Map<number, string>();
  let buf = '';
  let err = '';
  let killed = false;
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  child.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      const m = /^ACK (\d+) ([0-9a-f]{64})$/.exec(line);
      if (m) acks.set(Number(m[1]), m[2]!);
    }
    if (!killed && acks.size >= killAfter) {
      killed = true;
      child.kill('SIGKILL');
    }
  });
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
  if (signal !== 'SIGKILL') throw new Error(`child ended with ${code}/${signal} before the kill: ${err}`);
  return acks;
}

describe('crash safety', () => {
  it('keeps every acknowledged event across kill -9 and seals a torn tail', async () => {
    const acks = await burstAndKill(t.dir, 400);
    expect(acks.size).toBeGreaterThanOrEqual(400);
    const path = `${t.dir}/audit.jsonl`;
    // A kill -9 stops the process between syscalls; a machine crash can also leave half a write
    // behind. Simulate that on top: the start of the next batch, cut mid-record.
    const before = await readFile(path, 'utf8');
    const nextSeq = before.split('\n').length - 1;
    await appendFile(path, `{"seq":${nextSeq},"type":"event","prev":"${'a'.repeat(64)}","hash":"`);

    const w = await AuditWriter.open({ dataDir: t.dir, logger: silentLogger(), checkpointIntervalMs: 0 });
    expect(w.recovery).not.toBeNull();
    expect(w.recovery!.sealSeq).toBe(nextSeq);
    await w.close();

    const res = await verify(path, { jwks: await jwksOf(t.dir) });
    expect(res).toMatchObject({ ok: true, seals: 1 });
    const lines = (await readFile(path, 'utf8')).split('\n');
    const seal = parseRecord(lines[nextSeq]!);
    expect(seal.ok && seal.record.type).toBe('seal');
    for (const [seq, hash] of acks) {
      const p = parseRecord(lines[seq]!);
      expect(p.ok && p.record.hash, `acknowledged seq ${seq}`).toBe(hash);
    }
  }, 120_000);
});
