import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EnvoyHarnessError } from '../common/errors.js';
import { EnvoyProcess, envoyArgs, resolveLogLevel, runningEnvoys, stopAllEnvoys, tailFile } from './process.js';

describe('envoyArgs', () => {
  it('builds the command line', () => {
    expect(envoyArgs({ configPath: '/d/b.json', adminAddressPath: '/d/a', logLevel: 'warn' })).toEqual([
      '--config-path', '/d/b.json',
      '--admin-address-path', '/d/a',
      '--log-level', 'warn',
      '--disable-hot-restart',
      '--drain-time-s', '1',
      '--parent-shutdown-time-s', '2',
    ]);
    const more = envoyArgs({
      configPath: 'c', adminAddressPath: 'a', logLevel: 'debug', componentLogLevel: 'config:trace', concurrency: 2, extraArgs: ['--x'],
    });
    expect(more.slice(-5)).toEqual(['--component-log-level', 'config:trace', '--concurrency', '2', '--x']);
  });
});

describe('resolveLogLevel', () => {
  it('prefers the explicit level, then PORTCULLIS_ENVOY_LOG_LEVEL, then warn', () => {
    expect(resolveLogLevel('debug', { PORTCULLIS_ENVOY_LOG_LEVEL: 'trace' })).toBe('debug');
    expect(resolveLogLevel(undefined, { PORTCULLIS_ENVOY_LOG_LEVEL: 'trace' })).toBe('trace');
    expect(resolveLogLevel(undefined, {})).toBe('warn');
    expect(() => resolveLogLevel(undefined, { PORTCULLIS_ENVOY_LOG_LEVEL: 'loud' })).toThrow(EnvoyHarnessError);
  });
});

describe('tailFile', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-tail-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('returns the last lines', () => {
    const f = path.join(dir, 'a.log');
    fs.writeFileSync(f, 'one\ntwo\nthree\n');
    expect(tailFile(f, 2)).toBe('two\nthree');
    expect(tailFile(f, 10)).toBe('one\ntwo\nthree');
    expect(tailFile(path.join(dir, 'missing'), 3)).toBe('');
  });

  it('reads only the end of a large file', () => {
    const f = path.join(dir, 'big.log');
    fs.writeFileSync(f, `${'x'.repeat(1024)}\n`.repeat(1024) + 'last\n');
    expect(tailFile(f, 1)).toBe('last');
  });
});

/**
 * The failure paths of start(), with stand-ins that are not Envoy (a missing file, a script that
 * exits, a script that never opens an admin port). Starting the real Envoy is covered by
 * test/e2e/envoy-harness.test.ts.
 */
describe('EnvoyProcess.start failures', () => {
  let dir: string;
  const script = (name: string, body: string): string => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    return f;
  };
  const bootstrap = { nodeId: 'unit', xds: { port: 18000 } };
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-process-'));
  });
  afterAll(async () => {
    await stopAllEnvoys();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('reports a binary that cannot be spawned', async () => {
    const tmpRoot = fs.mkdtempSync(path.join(dir, 'root-'));
    const err = await EnvoyProcess.start({ bootstrap, binary: path.join(dir, 'nope'), tmpRoot }).catch((e: unknown) => e);
    expect((err as EnvoyHarnessError).code).toBe('envoy_start_failed');
    expect((err as Error).message).toContain('could not be spawned');
    expect(fs.readdirSync(tmpRoot)).toEqual([]);
  });

  it('reports an early exit with the log tail', async () => {
    const bin = script('exits', 'echo "critical: error initializing configuration: boom" >&2\nexit 3');
    const err = await EnvoyProcess.start({ bootstrap, binary: bin }).catch((e: unknown) => e);
    expect((err as EnvoyHarnessError).code).toBe('envoy_start_failed');
    expect((err as Error).message).toContain('exited (exit code 3) before its admin endpoint answered');
    expect((err as Error).message).toContain('error initializing configuration: boom');
  });

  it('times out, and leaves no process behind, when the admin never answers', async () => {
    const pidFile = path.join(dir, 'pid');
    const bin = script('hangs', `echo $$ > ${pidFile}\nexec sleep 600`);
    const err = await EnvoyProcess.start({ bootstrap, binary: bin, startTimeoutMs: 300, stopGraceMs: 200 }).catch((e: unknown) => e);
    expect((err as EnvoyHarnessError).code).toBe('envoy_timeout');
    expect((err as Error).message).toContain('admin endpoint');
    const pid = Number(fs.readFileSync(pidFile, 'utf8'));
    expect(() => process.kill(pid, 0)).toThrow();
    expect(runningEnvoys()).toEqual([]);
  });

  it('refuses an admin bound anywhere but 127.0.0.1', async () => {
    const bin = script('wide', 'while [ "$1" != "--admin-address-path" ]; do shift; done\necho 0.0.0.0:9901 > "$2"\nexec sleep 600');
    const err = await EnvoyProcess.start({ bootstrap, binary: bin, stopGraceMs: 200 }).catch((e: unknown) => e);
    expect((err as EnvoyHarnessError).code).toBe('envoy_start_failed');
    expect((err as Error).message).toContain('not 127.0.0.1');
    expect(runningEnvoys()).toEqual([]);
  });
});
