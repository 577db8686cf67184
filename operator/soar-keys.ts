import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { calculateJwkThumbprint, type JSONWebKeySet, type JWK } from 'jose';
import { PortcullisError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { ensureDir, exists, writeFileAtomic } from '../audit/fsutil.js';
import { PolicyError, type PolicyIssue } from '../policy/errors.js';
import type { Ir } from '../policy/ir.js';

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
 * configured in the policy (`soar.admin.keys[].jwksFile`, read by `loadSoarAdminKeys`; see soar-in.ts).
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

// ---------------------------------------------------------------------------------------------
// SOAR admin keys (inbound): `soar.admin.keys[].jwksFile` in the policy

/** Stable issue codes of `loadSoarAdminKeys` (in a PolicyError `policy_invalid`). */
export const SOAR_ADMIN_KEY_ISSUES = ['soar_admin_jwks_unreadable', 'soar_admin_jwks_invalid', 'soar_admin_jwks_private', 'soar_admin_kid_duplicate'] as const;
export type SoarAdminKeyIssue = (typeof SOAR_ADMIN_KEY_ISSUES)[number];

const MAX_JWKS_BYTES = 64 * 1024;

/** The admin trust the operator plane runs with: the audience and one JWKS of every configured key. */
export interface SoarAdminTrust {
  audience: string;
  jwks: JSONWebKeySet;
  /** kid → the policy's key name */
  keyNames: ReadonlyMap<string, string>;
}

/**
 * Read and check every JWKS file `ir.soar.admin` names. Each key must be a public Ed25519 (OKP) or
 * P-256 (EC) key with a `kid`, unique across the files. Throws a PolicyError (`policy_invalid`)
 * naming the policy file, the line of the key entry and `soar.admin.keys[i].jwksFile`, with one
 * of SOAR_ADMIN_KEY_ISSUES; the caller keeps its previous trust. `null` when the admin API is off.
 */
export async function loadSoarAdminKeys(ir: Ir): Promise<SoarAdminTrust | null> {
  const admin = ir.soar.admin;
  if (!admin) return null;
  const issues: PolicyIssue[] = [];
  const keys: JWK[] = [];
  const keyNames = new Map<string, string>();
  for (const [i, k] of admin.keys.entries()) {
    const issue = (code: SoarAdminKeyIssue, message: string, hint?: string) =>
      issues.push({ file: k.source.file, line: k.source.line, col: 1, path: `soar.admin.keys[${i}].jwksFile`, code, message, ...(hint ? { hint } : {}) });
    let text: string;
    try {
      const st = await stat(k.jwksFile);
      if (!st.isFile()) throw new Error('not a regular file');
      if (st.size > MAX_JWKS_BYTES) throw new Error(`larger than ${MAX_JWKS_BYTES} bytes`);
      text = await readFile(k.jwksFile, 'utf8');
    } catch (e) {
      const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      issue('soar_admin_jwks_unreadable', `SOAR admin key '${k.name}': cannot read ${k.jwksFile} (${why})`, 'the file must exist and be readable by Portcullis');
      continue;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      issue('soar_admin_jwks_invalid', `SOAR admin key '${k.name}': ${k.jwksFile} is not JSON`, 'expected a JWKS: {"keys": [...]}');
      continue;
    }
    const list = (parsed as { keys?: unknown } | null)?.keys;
    if (!Array.isArray(list) || list.length === 0) {
      issue('soar_admin_jwks_invalid', `SOAR admin key '${k.name}': ${k.jwksFile} is not a JWKS with at least one key`, 'expected {"keys": [...]}');
      continue;
    }
    for (const [j, raw] of list.entries()) {
      const jwk = raw as JWK;
      if (!jwk || typeof jwk !== 'object') {
        issue('soar_admin_jwks_invalid', `SOAR admin key '${k.name}': keys[${j}] is not an object`);
        continue;
      }
      if ('d' in jwk || 'p' in jwk || 'k' in jwk) {
        issue('soar_admin_jwks_private', `SOAR admin key '${k.name}': keys[${j}] holds private or secret key material`, 'configure only the SOAR platform\'s public keys; the private ones stay with it');
        continue;
      }
      const okp = jwk.kty === 'OKP' && jwk.crv === 'Ed25519' && (jwk.alg === undefined || jwk.alg === 'EdDSA' || jwk.alg === 'Ed25519');
      const ec = jwk.kty === 'EC' && jwk.crv === 'P-256' && (jwk.alg === undefined || jwk.alg === 'ES256');
      if (!okp && !ec) {
        issue('soar_admin_jwks_invalid', `SOAR admin key '${k.name}': keys[${j}] is not an Ed25519 or P-256 key (kty ${String(jwk.kty)}, crv ${String(jwk.crv)})`);
        continue;
      }
      if (typeof jwk.kid !== 'string' || !jwk.kid || jwk.kid.length > 256) {
        issue('soar_admin_jwks_invalid', `SOAR admin key '${k.name}': keys[${j}] has no kid`, 'every admin key needs a kid (requests name it in their header)');
        continue;
      }
      try {
        createPublicKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' });
      } catch {
        issue('soar_admin_jwks_invalid', `SOAR admin key '${k.name}': keys[${j}] (kid ${jwk.kid}) is not a valid public key`);
        continue;
      }
      const other = keyNames.get(jwk.kid);
      if (other !== undefined) {
        issue('soar_admin_kid_duplicate', `SOAR admin key '${k.name}': kid ${jwk.kid} is also in key '${other}'`, 'kids must be unique across soar.admin.keys');
        continue;
      }
      keyNames.set(jwk.kid, k.name);
      const pub: JWK = { kty: jwk.kty, crv: jwk.crv, x: jwk.x, ...(jwk.y !== undefined ? { y: jwk.y } : {}), kid: jwk.kid, ...(jwk.alg ? { alg: jwk.alg } : {}) };
      keys.push(pub);
    }
  }
  if (issues.length) throw new PolicyError('policy_invalid', issues);
  return { audience: admin.audience, jwks: { keys }, keyNames };
}
