import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { runAuditCli } from './cli.js';
import { sampleEvent, tempDir } from './testutil.js';
import { AuditWriter } from './writer.js';

function io() {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => (out += d.toString()));
  stderr.on('data', (d: Buffer) => (err += d.toString()));
  return { io: { stdout, stderr }, out: () => out, err: () => err };
}

const t = tempDir('audit-cli-');
let logPath = '';
let original = '';

beforeAll(async () => {
  const w = await AuditWriter.open({ dataDir: t.dir, logger: silentLogger(), checkpointEvery: 4, checkpointIntervalMs: 0 });
  for (let i = 0; i < 10; i++) await w.append(sampleEvent(i));
  await w.close();
  logPath = w.path;
  original = await readFile(logPath, 'utf8');
});
afterAll(() => t.cleanup());

describe('portcullis audit verify', () => {
  it('prints OK with counts and the chain head, exit 0', async () => {
    const c = io();
    expect(await runAuditCli(['verify', logPath], c.io)).toBe(0);
    expect(c.out()).toMatch(/^OK: 14 records, 3 checkpoints, chain head seq 13 [0-9a-f]{64} \(/);
  });

  it('accepts a leading "audit" and --json', async () => {
    const c = io();
    expect(await runAuditCli(['audit', 'verify', logPath, '--json'], c.io)).toBe(0);
    expect(JSON.parse(c.out())).toMatchObject({ ok: true, records: 14, checkpoints: 3, events: 10 });
  });

  it('prints FAIL with seq, line and reason, exit 1', async () => {
    const lines = original.split('\n');
    lines[5] = lines[5]!.replace('sb-3', 'sb-Z');
    await writeFile(logPath, lines.join('\n'));
    try {
      const c = io();
      expect(await runAuditCli(['verify', logPath], c.io)).toBe(1);
      expect(c.out()).toMatch(/^FAIL at record seq 5 \(line 6\): hash_mismatch — /);
      const j = io();
      expect(await runAuditCli(['verify', logPath, '--json'], j.io)).toBe(1);
      expect(JSON.parse(j.out())).toMatchObject({ ok: false, reason: 'hash_mismatch', seq: 5, line: 6 });
    } finally {
      await writeFile(logPath, original);
    }
  });

  it('exits 2 on usage errors and a missing JWKS', async () => {
    for (const argv of [[], ['verify'], ['verify', 'a', 'b'], ['verify', logPath, '--bogus'], ['frobnicate']]) {
      const c = io();
      expect(await runAuditCli(argv, c.io), argv.join(' ')).toBe(2);
      expect(c.err()).toMatch(/usage: portcullis audit verify/);
    }
    const c = io();
    expect(await runAuditCli(['verify', logPath, '--jwks', join(t.dir, 'nope.json')], c.io)).toBe(2);
    expect(c.err()).toMatch(/cannot read JWKS/);
    const d = io();
    expect(await runAuditCli(['verify', join(t.dir, 'missing.jsonl')], d.io)).toBe(2);
  });
});
