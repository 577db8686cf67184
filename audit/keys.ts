import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { calculateJwkThumbprint, CompactSign, compactVerify, createLocalJWKSet, type JSONWebKeySet, type JWK } from 'jose';
import type { Logger } from '../common/logger.js';
import { canonical } from './canonical.js';
import type { CheckpointStatement } from './chain.js';
import { AuditWriteError } from './errors.js';
import { exists, writeFileAtomic } from './fsutil.js';

/**
 * The checkpoint signing key: Ed25519, generated with Node's crypto on first start and stored as a
 * private JWK (mode 0600, atomic write) in the data dir. `kid` is the RFC 7638 thumbprint of the
 * public key. The public keys are exported as a JWKS file so `portcullis audit verify` can check
 * checkpoint signatures; keep a copy of that JWKS somewhere the log's host cannot rewrite.
 */

export const SIGNING_KEY_FILE = 'audit-signing-key.jwk';
export const JWKS_FILE = 'audit-jwks.json';
export const CHECKPOINT_JWS_TYP = 'portcullis-audit-checkpoint+jws';
const ALG = 'EdDSA';

export interface AuditSigningKey {
  kid: string;
  privateKey: KeyObject;
  publicJwk: JWK;
}

/** A fresh key held in memory only (tests, or a caller that manages key storage itself). */
export async function generateSigningKey(): Promise<AuditSigningKey> {
  const { privateKey } = generateKeyPairSync('ed25519');
  return fromPrivateKey(privateKey);
}

async function fromPrivateKey(privateKey: KeyObject): Promise<AuditSigningKey> {
  const pub = createPublicKey(privateKey).export({ format: 'jwk' }) as JWK;
  const base: JWK = { kty: pub.kty!, crv: pub.crv!, x: pub.x! };
  const kid = await calculateJwkThumbprint(base, 'sha256');
  return { kid, privateKey, publicJwk: { ...base, kid, alg: ALG, use: 'sig' } };
}

/** Load the key from `dataDir`, or create it there on first start. */
export async function loadOrCreateSigningKey(dataDir: string, log?: Logger): Promise<AuditSigningKey> {
  const path = join(dataDir, SIGNING_KEY_FILE);
  if (await exists(path)) {
    const st = await stat(path);
    if ((st.mode & 0o077) !== 0) {
      throw new AuditWriteError(`audit signing key ${path} has mode 0${(st.mode & 0o777).toString(8)}; it must be 0600`, {
        details: { path },
      });
    }
    let jwk: JWK;
    try {
      jwk = JSON.parse(await readFile(path, 'utf8')) as JWK;
    } catch (e) {
      throw new AuditWriteError(`audit signing key ${path} is unreadable`, { cause: e, details: { path } });
    }
    const key = await fromPrivateKey(createPrivateKey({ key: { kty: jwk.kty!, crv: jwk.crv!, x: jwk.x!, d: jwk.d! }, format: 'jwk' }));
    if (jwk.kid !== undefined && jwk.kid !== key.kid) {
      throw new AuditWriteError(`audit signing key ${path}: kid does not match the key`, { details: { path } });
    }
    return key;
  }
  const key = await generateSigningKey();
  const priv = key.privateKey.export({ format: 'jwk' }) as JWK;
  await writeFileAtomic(path, `${JSON.stringify({ ...priv, kid: key.kid, alg: ALG, use: 'sig' })}\n`, 0o600);
  log?.info({ kid: key.kid, path }, 'created audit checkpoint signing key');
  return key;
}

/** Add the key's public half to the JWKS file in `dataDir` (kept: earlier keys). Returns its path. */
export async function exportJwks(dataDir: string, key: AuditSigningKey): Promise<string> {
  const path = join(dataDir, JWKS_FILE);
  let keys: JWK[] = [];
  if (await exists(path)) {
    try {
      const cur = JSON.parse(await readFile(path, 'utf8')) as JSONWebKeySet;
      keys = Array.isArray(cur.keys) ? cur.keys : [];
    } catch {
      keys = [];
    }
  }
  if (keys.some((k) => k.kid === key.kid)) return path;
  keys.push(key.publicJwk);
  await writeFileAtomic(path, `${JSON.stringify({ keys }, null, 2)}\n`, 0o644);
  return path;
}

export async function readJwks(path: string): Promise<JSONWebKeySet> {
  const v = JSON.parse(await readFile(path, 'utf8')) as JSONWebKeySet;
  if (!Array.isArray(v?.keys)) throw new Error(`${path} is not a JWKS (no "keys" array)`);
  return v;
}

export function checkpointPayload(st: CheckpointStatement): Uint8Array {
  return new TextEncoder().encode(
    canonical({
      log_id: st.log_id,
      first_seq: st.first_seq,
      last_seq: st.last_seq,
      count: st.count,
      last_hash: st.last_hash,
      root: st.root,
      time: st.time,
    }),
  );
}

export async function signCheckpoint(key: AuditSigningKey, st: CheckpointStatement): Promise<string> {
  return new CompactSign(checkpointPayload(st)).setProtectedHeader({ alg: ALG, kid: key.kid, typ: CHECKPOINT_JWS_TYP }).sign(key.privateKey);
}

/**
 * Check a checkpoint's JWS against a JWKS and that it signs exactly `st` under `kid`. Returns null
 * when good, else why not.
 */
export async function checkCheckpointSignature(
  jws: string,
  kid: string,
  st: CheckpointStatement,
  keyset: ReturnType<typeof createLocalJWKSet>,
): Promise<string | null> {
  let res;
  try {
    res = await compactVerify(jws, keyset, { algorithms: [ALG, 'Ed25519'] });
  } catch (e) {
    return `signature does not verify: ${(e as Error).message}`;
  }
  if (res.protectedHeader.kid !== kid) return `JWS kid ${String(res.protectedHeader.kid)} differs from the checkpoint's kid ${kid}`;
  if (res.protectedHeader.typ !== CHECKPOINT_JWS_TYP) return 'JWS is not a checkpoint signature (typ)';
  const expected = checkpointPayload(st);
  if (Buffer.compare(Buffer.from(res.payload), Buffer.from(expected)) !== 0) return 'the signed statement differs from the checkpoint fields';
  return null;
}

export { createLocalJWKSet };
