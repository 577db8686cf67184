import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DEFAULT_AUDIENCE, LOCAL_ISSUER, TOKEN_KEY_FILE } from '../mcp/token.js';
import { runTokenCli } from './token.js';

function io() {
  const out = new PassThrough();
  const err = new PassThrough();
  let o = '';
  let e = '';
  out.on('data', (c) => (o += c));
  err.on('data', (c) => (e += c));
  return { io: { stdout: out, stderr: err }, out: () => o, err: () => e };
}

describe('portcullis token', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-token-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('issue creates a 0600 key, prints a token Envoy-style verification accepts, and jwks prints the public key only', async () => {
    const a = io();
    expect(await runTokenCli(['issue', '--sub', 'alice', '--ttl', '10m', '--data-dir', dir], a.io)).toBe(0);
    const token = a.out().trim();
    expect(token.split('.')).toHaveLength(3);
    expect(fs.statSync(path.join(dir, TOKEN_KEY_FILE)).mode & 0o777).toBe(0o600);
    expect(a.err()).toMatch(/created the local token signing key/);

    const j = io();
    expect(await runTokenCli(['jwks', '--data-dir', dir], j.io)).toBe(0);
    const jwks = JSON.parse(j.out());
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]).not.toHaveProperty('d');
    const { payload, protectedHeader } = await jwtVerify(token, createLocalJWKSet(jwks), { issuer: LOCAL_ISSUER, audience: DEFAULT_AUDIENCE });
    expect(protectedHeader.alg).toBe('EdDSA');
    expect(payload.sub).toBe('alice');
    expect(payload.exp! - payload.iat!).toBe(600);

    // the same key signs the next token
    const b = io();
    expect(await runTokenCli(['issue', '--sub', 'bob', '--aud', 'x', '--aud', 'y', '--json', '--data-dir', dir], b.io)).toBe(0);
    const issued = JSON.parse(b.out());
    expect(issued.claims).toMatchObject({ sub: 'bob', aud: ['x', 'y'], iss: LOCAL_ISSUER });
    expect(b.err()).toBe('');
    await jwtVerify(issued.token, createLocalJWKSet(jwks), { audience: 'y' });
  });

  it('refuses a key file others can read, a lifetime over an hour, and a missing subject', async () => {
    const a = io();
    expect(await runTokenCli(['issue', '--sub', 'alice', '--data-dir', dir], a.io)).toBe(0);
    fs.chmodSync(path.join(dir, TOKEN_KEY_FILE), 0o644);
    const b = io();
    expect(await runTokenCli(['issue', '--sub', 'alice', '--data-dir', dir], b.io)).toBe(1);
    expect(b.err()).toMatch(/must be 0600/);
    const c = io();
    expect(await runTokenCli(['issue', '--sub', 'alice', '--ttl', '2h', '--data-dir', dir], c.io)).toBe(2);
    const d = io();
    expect(await runTokenCli(['issue', '--data-dir', dir], d.io)).toBe(2);
    fs.chmodSync(path.join(dir, TOKEN_KEY_FILE), 0o600);
    const e = io();
    expect(await runTokenCli(['issue', '--sub', 'has space', '--data-dir', dir], e.io)).toBe(2);
  });

  it('uses PORTCULLIS_DATA_DIR when no --data-dir is given', async () => {
    const a = io();
    expect(await runTokenCli(['issue', '--sub', 'alice'], a.io, { PORTCULLIS_DATA_DIR: dir })).toBe(0);
    expect(fs.existsSync(path.join(dir, TOKEN_KEY_FILE))).toBe(true);
  });
});
