import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { calculateJwkThumbprint, type JSONWebKeySet, type JWK } from 'jose';
import { PortcullisError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { ensureDir, exists, writeFileAtomic } from '../audit/fsutil.js';

/**
 * Keys of the SOAR integration.
 *
 * Outgoing webhooks: `soar.webhooks[].signingKey.file` in the policy is OUR Ed25519 private key
 * that signs the webhooks to that URL (the schema describes it as "key that signs webhook
 * bodies"). It is read as a private JWK (OKP/Ed25519) or a PKCS#8 PEM; when the file does not exist
 * it is generated there (mode 0600). `kid` is the RFC 7638 thumbprint. The public halves are
 * published as a JWKS (GET /v1/soar/jwks.json on the operator API, and `soar-jwks.json` in the
 * data dir) for receivers to verify with.
 *
 * Incoming admin calls are signed by the SOAR platform's own keys; only their public halves are
 * configured here (see soar-in.ts).
 */

export const SOAR_JWKS_FILE = 'soar-jwks.json';

export interface WebhookSigningKey {
  kid: string;
  privateKey: KeyObject;
  publicJwk: JWK;
}

export async function keyFromPrivate(privateKey: KeyObject): Promise<WebhookSigningKey> {
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new PortcullisError('credential_unavailable', `webhook signing keys must be Ed25519 (got ${privateKey.asymmetricKeyType ?? 'unknown'})`);
  }
  const pub = createPublicKey(privateKey).export({ format: 'jwk' }) as JWK;
  const base: JWK = { kty: pub.kty!, crv: pub.crv!, x: pub.x! };
  const kid = await calculateJwkThumbprint(base, 'sha256');
  return { kid, privateKey, publicJwk: { ...base, kid, alg: 'EdDSA', use: 'sig' } };
}

export function generateWebhookKey(): Promise<WebhookSigningKey> {
  return keyFromPrivate(generateKeyPairSync('ed25519').privateKey);
}

/** Load the signing key from `file`, or create it there (0600, directory 0700) if it does not exist. */
export async function loadOrCreateWebhookKey(file: string, log?: Logger): Promise<WebhookSigningKey> {
  if (!(await exists(file))) {
    await ensureDir(dirname(file));
    const key = await generateWebhookKey();
    const priv = key.privateKey.export({ format: 'jwk' }) as JWK;
    await writeFileAtomic(file, `${JSON.stringify({ ...priv, kid: key.kid, alg: 'EdDSA', use: 'sig' })}\n`, 0o600);
    log?.info({ kid: key.kid, file }, 'created SOAR webhook signing key');
    return key;
  }
  const st = await stat(file);
  if ((st.mode & 0o077) !== 0) {
    throw new PortcullisError('credential_unavailable', `webhook signing key ${file} has mode 0${(st.mode & 0o777).toString(8)}; it must be 0600`, {
      details: { file },
    });
  }
  const text = (await readFile(file, 'utf8')).trim();
  let key: KeyObject;
  try {
    if (text.startsWith('{')) {
      const jwk = JSON.parse(text) as JWK;
      if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || !jwk.d || !jwk.x) throw new Error('not an Ed25519 private JWK');
      key = createPrivateKey({ key: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, d: jwk.d }, format: 'jwk' });
    } else {
      key = createPrivateKey(text);
    }
  } catch (e) {
    throw new PortcullisError('credential_unavailable', `webhook signing key ${file} is unreadable: ${(e as Error).message}`, { cause: e, details: { file } });
  }
  return keyFromPrivate(key);
}

/**
 * Write the JWKS of `keys` to `<dataDir>/soar-jwks.json` (0644), keeping keys published before (a
 * receiver may still verify a delivery signed with a retired key). Returns the JWKS written.
 */
export async function publishJwks(dataDir: string, keys: readonly WebhookSigningKey[]): Promise<{ path: string; jwks: JSONWebKeySet }> {
  const path = join(dataDir, SOAR_JWKS_FILE);
  let prev: JWK[] = [];
  try {
    const cur = JSON.parse(await readFile(path, 'utf8')) as JSONWebKeySet;
    if (Array.isArray(cur.keys)) prev = cur.keys;
  } catch {
    prev = [];
  }
  const byKid = new Map<string, JWK>();
  for (const k of [...keys.map((k) => k.publicJwk), ...prev]) if (k.kid && !byKid.has(k.kid)) byKid.set(k.kid, k);
  const jwks: JSONWebKeySet = { keys: [...byKid.values()] };
  await ensureDir(dataDir);
  await writeFileAtomic(path, `${JSON.stringify(jwks, null, 2)}\n`, 0o644);
  return { path, jwks };
}
