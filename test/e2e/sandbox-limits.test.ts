import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventBus } from '../../common/events.js';
import { PortcullisError } from '../../common/errors.js';
import { silentLogger } from '../../common/logger.js';
import { Supervisor } from '../../sandbox/supervisor.js';
import { imageAvailable, sandboxImage, sweepInstance, testConfig } from '../../sandbox/testkit.js';
import { e2eGate, REQUIRE_E2E } from '../harness/e2e-gate.js';
import { eventually } from '../harness/ports.js';

/**
 * Issue 5, limits and exec/file semantics: 1 GiB to stdout (host memory bounded, truncation marker,
 * sandbox still usable), a fork bomb against the process limit, a disk fill (ENOSPC in the sandbox
 * only), out-of-memory; exit / timeout / kill / OOM outcomes; the file tools; the docker-exec fallback.
 */

const gate = e2eGate(['docker', 'runsc', 'root'], 'sandbox-limits');
const image = gate.ok && imageAvailable();
if (gate.ok && !image) {
  const line = `[portcullis] sandbox-limits: SKIPPING — image ${sandboxImage()} missing (bash sandbox/image/build.sh)`;
  if (REQUIRE_E2E) throw new Error(line);
  process.stderr.write(`\n${line}\n`);
}

const INSTANCE = 'e2e-limits';
const INSTANCE_DX = 'e2e-limits-dx';
const MiB = 1 << 20;
const PIDS = 96;

async function errorCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return e instanceof PortcullisError ? e.code : `other: ${(e as Error).message}`;
  }
}

function hostFree(path: string): number {
  const s = fs.statfsSync(path);
  return s.bavail * s.bsize;
}

describe.skipIf(!gate.ok || !image)('sandbox limits and exec semantics (real Docker + runsc)', () => {
  let sup: Supervisor;
  let a: string;
  let b: string;

  beforeAll(async () => {
    await sweepInstance(INSTANCE);
    sup = new Supervisor({ config: testConfig(INSTANCE, { limits: { memoryBytes: 512 * MiB, workspaceBytes: 64 * MiB, tmpBytes: 32 * MiB, pids: PIDS, hostThreads: 2048 } }), logger: silentLogger(), events: new EventBus() });
    await sup.start();
    [a, b] = (await Promise.all([sup.createSession('alice'), sup.createSession('bob')])).map((s) => s.sessionId) as [string, string];
  });

  afterAll(async () => {
    await sup?.stop().catch(() => undefined);
    await sweepInstance(INSTANCE).catch(() => undefined);
  });

  it('1 GiB to stdout: capped at 8 MiB with a truncation marker, host memory bounded, sandbox still usable', async () => {
    const base = process.memoryUsage().rss;
    let peak = base;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().rss);
    }, 20);
    let r;
    try {
      r = await sup.exec(a, { command: ['dd', 'if=/dev/zero', 'bs=1M', 'count=1024', 'status=none'], timeoutMs: 120_000 });
    } finally {
      clearInterval(sampler);
    }
    expect(r.outcome).toBe('exited');
    expect(r.exitCode).toBe(0);
    expect(Buffer.byteLength(r.stdout)).toBe(8 * MiB);
    expect(r.stdoutTruncated).toEqual({ droppedBytes: 1024 * MiB - 8 * MiB });
    expect(r.stderrTruncated).toBeNull();
    expect(peak - base).toBeLessThan(160 * MiB);
    const after = await sup.exec(a, { command: ['echo', 'still usable'] });
    expect(after.stdout).toBe('still usable\n');
  });

  it('the cap applies per stream and per call', async () => {
    const r = await sup.exec(a, { command: ['python3', '-c', 'import sys; sys.stdout.write("o"*5000); sys.stderr.write("e"*100000)'], maxOutputBytes: 1024 });
    expect(r.stdout).toBe('o'.repeat(1024));
    expect(r.stdoutTruncated).toEqual({ droppedBytes: 5000 - 1024 });
    expect(r.stderr).toBe('e'.repeat(1024));
    expect(r.stderrTruncated).toEqual({ droppedBytes: 100000 - 1024 });
  });

  it('fork bomb: contained by the process limit; the sandbox recovers', async () => {
    const count = await sup.exec(a, {
      command: [
        'python3',
        '-c',
        'import os\nn=0\nkids=[]\ntry:\n  while n < 10000:\n    kids.append(os.posix_spawn("/bin/sleep", ["sleep","30"], {})); n+=1\nexcept OSError as e:\n  print(n, e.errno)\nfor k in kids: os.kill(k, 9)',
      ],
      timeoutMs: 60_000,
    });
    const [spawned, errno] = count.stdout.trim().split(' ').map(Number);
    expect(errno).toBe(11); // EAGAIN from RLIMIT_NPROC
    expect(spawned).toBeLessThan(PIDS);
    expect(spawned).toBeGreaterThan(PIDS / 2);

    const bomb = await sup.exec(a, { command: ['bash', '-c', 'f(){ f | f & }; f; sleep 60'], timeoutMs: 4_000 });
    expect(['timed_out', 'oom']).toContain(bomb.outcome);
    const ok = await sup.exec(a, { command: ['python3', '-c', 'import os; print(len([p for p in os.listdir("/proc") if p.isdigit()]))'] });
    expect(ok.outcome).toBe('exited');
    // agent + this python (threads are not in /proc's top level)
    expect(Number(ok.stdout.trim())).toBeLessThanOrEqual(4);
  });

  it('disk fill: ENOSPC inside the sandbox only', async () => {
    const hostBefore = hostFree('/var/lib/docker');
    const fill = await sup.exec(a, { command: ['sh', '-c', 'head -c 200M /dev/zero > /workspace/fill; echo rc=$?; python3 -c "import os; print(os.path.getsize(\'/workspace/fill\'))"'] });
    expect(fill.stderr).toMatch(/No space left on device/);
    const [rc, size] = fill.stdout.trim().split('\n');
    expect(rc).toBe('rc=1');
    expect(Number(size)).toBeLessThanOrEqual(64 * MiB);
    expect(Number(size)).toBeGreaterThan(60 * MiB);
    // the other surface of this sandbox, and another sandbox, still write
    const tmp = await sup.exec(a, { command: ['sh', '-c', 'echo x > /tmp/after-fill && cat /tmp/after-fill'] });
    expect(tmp.stdout).toBe('x\n');
    expect((await sup.writeFile(b, 'after-fill.txt', 'fine')).size).toBe(4);
    // the host's disk did not take the fill (the surfaces are memory-backed and capped)
    expect(hostBefore - hostFree('/var/lib/docker')).toBeLessThan(32 * MiB);
    await sup.exec(a, { command: ['rm', '-f', '/workspace/fill', '/tmp/after-fill'] });
  });

  it('out of memory: the offending command is killed with outcome oom; the sandbox survives', async () => {
    const r = await sup.exec(a, { command: ['python3', '-c', 'import time\nb=[]\nwhile True:\n  b.append(bytearray(8<<20)); time.sleep(0.01)'], timeoutMs: 60_000 });
    expect(r.outcome).toBe('oom');
    expect(r.exitCode).toBeNull();
    expect((await sup.exec(a, { command: ['echo', 'alive'] })).stdout).toBe('alive\n');
    expect(sup.getSession(a)?.state).toBe('ready');
  });

  it('distinct outcomes: exited (with its code), timed out, killed', async () => {
    const exited = await sup.exec(a, { command: ['sh', '-c', 'echo out; echo err >&2; exit 3'] });
    expect(exited).toMatchObject({ outcome: 'exited', exitCode: 3, stdout: 'out\n', stderr: 'err\n', stdoutTruncated: null, stderrTruncated: null });
    const timed = await sup.exec(a, { command: ['sh', '-c', 'echo before; sleep 30'], timeoutMs: 500 });
    expect(timed).toMatchObject({ outcome: 'timed_out', exitCode: null, stdout: 'before\n' });
    const killed = await sup.exec(a, { command: ['sh', '-c', 'kill -9 $$'] });
    expect(killed).toMatchObject({ outcome: 'killed', exitCode: null });
    const missing = await sup.exec(a, { command: ['no-such-command-xyz'] });
    expect(missing).toMatchObject({ outcome: 'exited', exitCode: 127 });
    expect(missing.stderr).toMatch(/no-such-command-xyz/);
  });

  it('stdin, working directory and env additions', async () => {
    const r = await sup.exec(a, { command: ['sh', '-c', 'pwd; cat; echo " $GREETING"'], stdin: 'from stdin', cwd: '/tmp', env: { GREETING: 'x', LANG: 'C.UTF-8' } });
    // GREETING is not allowlisted: stripped
    expect(r.stdout).toBe('/tmp\nfrom stdin \n');
    await sup.exec(a, { command: ['mkdir', '-p', '/workspace/sub'] });
    const rel = await sup.exec(a, { command: ['pwd'], cwd: 'sub' });
    expect(rel.stdout).toBe('/workspace/sub\n');
    const bad = await sup.exec(a, { command: ['pwd'], cwd: '/nonexistent' });
    expect(bad.exitCode).not.toBe(0);
  });

  it('file tools: write (atomic), read, edit, list; binary; caps', async () => {
    expect(await sup.writeFile(a, 'proj/src/main.py', 'print("hi")\n')).toEqual({ size: 12 });
    expect(await sup.readFile(a, '/workspace/proj/src/main.py')).toEqual({ content: 'print("hi")\n', encoding: 'utf8', size: 12 });
    expect(await sup.editFile(a, 'proj/src/main.py', '"hi"', '"hello"')).toEqual({ replacements: 1 });
    expect((await sup.readFile(a, 'proj/src/main.py')).content).toBe('print("hello")\n');
    expect(await errorCode(sup.editFile(a, 'proj/src/main.py', 'absent', 'x'))).toBe('edit_failed');
    const bin = Buffer.from([0, 1, 2, 255]);
    await sup.writeFile(a, 'proj/blob.bin', bin.toString('base64'), { encoding: 'base64' });
    expect(await sup.readFile(a, 'proj/blob.bin')).toEqual({ content: bin.toString('base64'), encoding: 'base64', size: 4 });
    expect(await sup.listFiles(a, 'proj')).toEqual([
      { name: 'blob.bin', type: 'file', size: 4 },
      { name: 'src', type: 'dir', size: expect.any(Number) },
    ]);
    await sup.exec(a, { command: ['sh', '-c', 'head -c 100000 /dev/zero > /workspace/proj/big'] });
    expect(await errorCode(sup.readFile(a, 'proj/big', { maxBytes: 1024 }))).toBe('file_error');
    expect(await errorCode(sup.readFile(a, 'proj/missing'))).toBe('file_error');
  });

  it('file tools: deny paths and symlink escapes are refused', async () => {
    for (const p of ['.bashrc', 'repo/.git/hooks/pre-commit', '.ssh/authorized_keys', '.mcp.json', 'bin/ls', '/etc/passwd', '../etc/x']) {
      expect(await errorCode(sup.writeFile(a, p, 'x')), p).toBe('path_denied');
    }
    await sup.exec(a, {
      command: ['sh', '-c', 'cd /workspace && ln -sf /proc/self/environ leak && ln -sf /etc out && ln -sf .bashrc innocent && mkdir -p d && ln -sf ../.ssh d/keys'],
    });
    expect(await errorCode(sup.readFile(a, 'leak'))).toBe('path_denied');
    expect(await errorCode(sup.listFiles(a, 'out'))).toBe('path_denied');
    expect(await errorCode(sup.readFile(a, 'out/passwd'))).toBe('path_denied');
    expect(await errorCode(sup.writeFile(a, 'innocent', 'x'))).toBe('path_denied');
    expect(await errorCode(sup.writeFile(a, 'd/keys/authorized_keys', 'x'))).toBe('path_denied');
    // nothing was written through the links
    const r = await sup.exec(a, { command: ['python3', '-c', 'import os; print(os.path.exists("/workspace/.bashrc"), os.path.exists("/workspace/.ssh"))'] });
    expect(r.stdout).toBe('False False\n');
  });

  it('exec requests are validated', async () => {
    expect(await errorCode(sup.exec(a, { command: [] }))).toBe('schema_invalid');
    expect(await errorCode(sup.exec('no-such-session', { command: ['true'] }))).toBe('session_not_found');
  });

  describe('without the OOM watchdog, the cgroup limit kills the whole sandbox', () => {
    const INST = 'e2e-limits-nowd';
    let nowd: Supervisor;
    const bus = new EventBus();
    beforeAll(async () => {
      await sweepInstance(INST);
      nowd = new Supervisor({ config: testConfig(INST, { limits: { memoryBytes: 256 * MiB, workspaceBytes: 32 * MiB, tmpBytes: 16 * MiB, oomWatchdog: false } }), logger: silentLogger(), events: bus });
      await nowd.start();
    });
    afterAll(async () => {
      await nowd?.stop().catch(() => undefined);
      await sweepInstance(INST).catch(() => undefined);
    });

    it('outcome oom, and the session ends (its sandbox is gone)', async () => {
      const s = await nowd.createSession('mallory');
      const r = await nowd.exec(s.sessionId, { command: ['python3', '-c', 'import time\nb=[]\nwhile True:\n  b.append(bytearray(8<<20)); time.sleep(0.01)'], timeoutMs: 60_000 });
      expect(r.outcome).toBe('oom');
      await eventually(() => nowd.getSession(s.sessionId)?.state === 'destroyed', 30_000, 'the OOM-killed session to end');
      expect(bus.history('sandbox.destroyed').at(-1)?.data.reason).toBe('sandbox_oom');
      expect(bus.history('sandbox.exited').at(-1)?.data.oomKilled).toBe(true);
    });
  });

  describe('docker exec fallback', () => {
    let dx: Supervisor;
    let s: string;
    beforeAll(async () => {
      await sweepInstance(INSTANCE_DX);
      dx = new Supervisor({
        config: testConfig(INSTANCE_DX, { exec: { transport: 'docker-exec' }, limits: { memoryBytes: 256 * MiB, workspaceBytes: 32 * MiB, tmpBytes: 16 * MiB, oomWatchdog: false } }),
        logger: silentLogger(),
        events: new EventBus(),
      });
      await dx.start();
      s = (await dx.createSession('carol')).sessionId;
    });
    afterAll(async () => {
      await dx?.stop().catch(() => undefined);
      await sweepInstance(INSTANCE_DX).catch(() => undefined);
    });

    it('same semantics: stdin, cwd, filtered env, exit code, credential in the proxy variables', async () => {
      const r = await dx.exec(s, { command: ['sh', '-c', 'pwd; cat; echo "[$GITHUB_TOKEN]"; echo "$HTTPS_PROXY" | cut -c1-15; exit 4'], stdin: 'in', cwd: '/tmp', env: { GITHUB_TOKEN: 'ghp_x' } });
      expect(r).toMatchObject({ outcome: 'exited', exitCode: 4, stdout: '/tmp\nin[]\nhttp://session:\n' });
    });

    it('timeout and the output cap', async () => {
      const t = await dx.exec(s, { command: ['sleep', '30'], timeoutMs: 500 });
      expect(t.outcome).toBe('timed_out');
      const big = await dx.exec(s, { command: ['dd', 'if=/dev/zero', 'bs=1M', 'count=32', 'status=none'], maxOutputBytes: MiB });
      expect(big.outcome).toBe('exited');
      expect(Buffer.byteLength(big.stdout)).toBe(MiB);
      expect(big.stdoutTruncated).toEqual({ droppedBytes: 31 * MiB });
    });

    it('a sandbox OOM-killed under an exec: outcome oom, the session ends', async () => {
      const r = await dx.exec(s, { command: ['python3', '-c', 'import time\nb=[]\nwhile True:\n  b.append(bytearray(8<<20)); time.sleep(0.01)'], timeoutMs: 60_000 });
      expect(r.outcome).toBe('oom');
      await eventually(() => dx.getSession(s)?.state === 'destroyed', 30_000, 'the OOM-killed session to end');
    });
  });
});
