import { readFile, stat } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { parseRecord } from './chain.js';
import { AuditClient, AuditServer } from './server.js';
import { errno, FaultyIo, readJsonl, sampleEvent, tempDir } from './testutil.js';
import { AuditWriter } from './writer.js';

const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup() {
  const t = tempDir();
  const io = new FaultyIo();
  const writer = await AuditWriter.open({ dataDir: t.dir, logger: silentLogger(), checkpointIntervalMs: 0, io });
  const server = await AuditServer.start({ writer, dataDir: t.dir, logger: silentLogger() });
  cleanups.push(t.cleanup, () => writer.close(), () => server.close());
  const token = (await readFile(server.tokenPath, 'utf8')).trim();
  return { dir: t.dir, io, writer, server, token };
}

/** Send raw lines; collect response lines until the server closes or `count` arrived. */
async function raw(socketPath: string, lines: string[], count: number): Promise<{ responses: Record<string, unknown>[]; closed: boolean }> {
  return new Promise((resolve, reject) => {
    const s = createConnection(socketPath);
    let buf = '';
    const responses: Record<string, unknown>[] = [];
    s.setEncoding('utf8');
    s.on('error', reject);
    s.on('data', (d: string) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        responses.push(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
        buf = buf.slice(nl + 1);
      }
      if (responses.length >= count && count > 0) {
        s.end();
        resolve({ responses, closed: false });
      }
    });
    s.on('close', () => resolve({ responses, closed: true }));
    // a server that neither answers enough nor closes: report what we have instead of hanging
    setTimeout(() => {
      s.destroy();
      resolve({ responses, closed: false });
    }, 5000).unref();
    s.on('connect', () => s.write(lines.map((l) => `${l}\n`).join('')));
  });
}

describe('AuditServer / AuditClient', () => {
  it('listens on a 0600 socket with a 0600 token file', async () => {
    const { server } = await setup();
    const st = await stat(server.socketPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect((await stat(server.tokenPath)).mode & 0o777).toBe(0o600);
  });

  it('refuses a submission without the right token, writes nothing and closes the connection', async () => {
    const { server, writer } = await setup();
    for (const token of [undefined, 'wrong', 'a'.repeat(64)]) {
      const { responses, closed } = await raw(server.socketPath, [JSON.stringify({ id: 1, token, event: sampleEvent(1) })], 0);
      expect(responses).toEqual([{ id: 1, ok: false, code: 'unauthorized', message: 'missing or wrong token' }]);
      expect(closed).toBe(true);
    }
    expect(server.stats.refusedAuth).toBe(3);
    expect(await readJsonl(writer.path)).toHaveLength(1); // header only
  });

  it('acknowledges an authenticated submission only after the fdatasync', async () => {
    const { server, io, token, writer } = await setup();
    const client = await AuditClient.connect({ socketPath: server.socketPath, token });
    cleanups.push(() => client.close());
    io.holdSync = true;
    let acked = false;
    const p = client.submit(sampleEvent(7)).then((r) => {
      acked = true;
      return r;
    });
    await vi.waitFor(() => expect(io.heldCount).toBe(1));
    await new Promise((r) => setTimeout(r, 30));
    expect(acked).toBe(false);
    io.holdSync = false;
    io.release();
    const r = await p;
    expect(r.seq).toBe(1);
    const line = (await readJsonl(writer.path))[1]!;
    const rec = parseRecord(line);
    expect(rec.ok && rec.record.hash).toBe(r.hash);
  });

  it('reads the token from its file and pipelines many submissions', async () => {
    const { server } = await setup();
    const client = await AuditClient.connect({ socketPath: server.socketPath, tokenPath: server.tokenPath });
    cleanups.push(() => client.close());
    const rs = await Promise.all(Array.from({ length: 50 }, (_, i) => client.submit(sampleEvent(i))));
    expect(new Set(rs.map((r) => r.seq)).size).toBe(50);
  });

  it('refuses invalid events and passes writer failures on as audit_write_failed', async () => {
    const { server, token, io } = await setup();
    const client = await AuditClient.connect({ socketPath: server.socketPath, token });
    cleanups.push(() => client.close());
    await expect(client.submit({ not: 'ocsf' } as never)).rejects.toMatchObject({ code: 'audit_event_invalid' });
    io.failWrite = errno('ENOSPC');
    await expect(client.submit(sampleEvent(1))).rejects.toMatchObject({ code: 'audit_write_failed' });
  });

  it('refuses a malformed request line', async () => {
    const { server } = await setup();
    const { responses, closed } = await raw(server.socketPath, ['this is not json'], 0);
    expect(responses[0]).toMatchObject({ ok: false, code: 'usage' });
    expect(closed).toBe(true);
  });
});
