import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { calculateJwkThumbprint, SignJWT, type JWK } from 'jose';
import { PortcullisError } from '../common/errors.js';

/**
 * Local-mode MCP tokens (the solo shelf needs no IdP): an Ed25519 signing key kept in the data dir
 * (private JWK, mode 0600, created on first use), tokens minted by `portcullis token issue`, and the
 * public JWKS handed to Envoy's jwt_authn inline (`local_jwks`).
 */

export const LOCAL_ISSUER = 'portcullis-local';
export const DEFAULT_AUDIENCE = 'portcullis-mcp';
export const TOKEN_KEY_FILE = 'mcp-token-key.jwk';
export const TOKEN_ALG = 'EdDSA';
/** Upper bound on a local token's lifetime (NFR-SEC-10). */
export const MAX_TOKEN_TTL_SECONDS = 3600;

export interface LocalTokenKey {
  kid: string;
  privateKey: KeyObject;
  publicJwk: JWK;
}

async function fromPrivate(privateKey: KeyObject): Promise<LocalTokenKey> {
  const pub = createPublicKey(privateKey).export({ format: 'jwk' }) as JWK;
  const base: JWK = { kty: pub.kty!, crv: pub.crv!, x: pub.x! };
  const kid = await calculateJwkThumbprint(base, 'sha256');
  return { kid, privateKey, publicJwk: { ...base, kid, alg: TOKEN_ALG, use: 'sig' } };
}

export async function generateTokenKey(): Promise<LocalTokenKey> {
  return fromPrivate(generateKeyPairSync('ed25519').privateKey);
}

/** Load the signing key from `dataDir`; undefined when there is none yet. Refuses a key readable by others. */
export async function loadTokenKey(dataDir: string): Promise<LocalTokenKey | undefined> {
  const file = path.join(dataDir, TOKEN_KEY_FILE);
  let st;
  try {
    st = await fs.stat(file);
  } catch {
    return undefined;
  }
  if ((st.mode & 0o077) !== 0) {
    throw new PortcullisError('credential_unavailable', `token signing key ${file} has mode 0${(st.mode & 0o777).toString(8)}; it must be 0600`);
  }
  let jwk: JWK;
  try {
    jwk = JSON.parse(await fs.readFile(file, 'utf8')) as JWK;
  } catch (e) {
    throw new PortcullisError('credential_unavailable', `token signing key ${file} is unreadable`, { cause: e });
  }
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || !jwk.d || !jwk.x) throw new PortcullisError('credential_unavailable', `token signing key ${file} is not an Ed25519 private JWK`);
  const key = await fromPrivate(createPrivateKey({ key: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, d: jwk.d }, format: 'jwk' }));
  if (jwk.kid !== undefined && jwk.kid !== key.kid) throw new PortcullisError('credential_unavailable', `token signing key ${file}: kid does not match the key`);
  return key;
}

/** Load the key, or create it (0600, atomically; the data dir 0700 if it is created). */
export async function loadOrCreateTokenKey(dataDir: string): Promise<{ key: LocalTokenKey; created: boolean }> {
  const existing = await loadTokenKey(dataDir);
  if (existing) return { key: existing, created: false };
  await fs.mkdir(dataDir, { recursive: true, mode: 0o700 });
  const key = await generateTokenKey();
  const priv = key.privateKey.export({ format: 'jwk' }) as JWK;
  const file = path.join(dataDir, TOKEN_KEY_FILE);
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  const fh = await fs.open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(`${JSON.stringify({ ...priv, kid: key.kid, alg: TOKEN_ALG, use: 'sig' })}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await fs.link(tmp, file);
  } catch (e) {
    // another process created it first: use theirs
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    await fs.rm(tmp, { force: true });
    const theirs = await loadTokenKey(dataDir);
    if (!theirs) throw e;
    return { key: theirs, created: false };
  }
  await fs.rm(tmp, { force: true });
  return { key, created: true };
}

/** The public JWKS Envoy validates local tokens with. */
export function localJwks(...keys: LocalTokenKey[]): { keys: JWK[] } {
  return { keys: keys.map((k) => ({ ...k.publicJwk })) };
}

export interface IssueOptions {
  sub: string;
  ttlSeconds?: number;
  audience?: string | string[];
  issuer?: string;
  /** seconds since the epoch; default now */
  now?: number;
  /** extra claims (tests: e.g. a custom caller claim) */
  claims?: Record<string, unknown>;
}

export interface IssuedToken {
  token: string;
  claims: { iss: string; sub: string; aud: string | string[]; iat: number; nbf: number; exp: number; jti: string };
}

const SUB_RE = /^\S{1,256}$/;

export async function issueToken(key: LocalTokenKey, o: IssueOptions): Promise<IssuedToken> {
  if (!SUB_RE.test(o.sub)) throw new PortcullisError('usage', 'the subject must be 1-256 characters without spaces');
  const ttl = o.ttlSeconds ?? 900;
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_TOKEN_TTL_SECONDS) throw new PortcullisError('usage', `the token lifetime must be 1 s .. ${MAX_TOKEN_TTL_SECONDS / 60} min`);
  const now = o.now ?? Math.floor(Date.now() / 1000);
  const claims = {
    iss: o.issuer ?? LOCAL_ISSUER,
    sub: o.sub,
    aud: o.audience ?? DEFAULT_AUDIENCE,
    iat: now,
    nbf: now,
    exp: now + ttl,
    jti: randomBytes(16).toString('base64url'),
  };
  const token = await new SignJWT({ ...(o.claims ?? {}), ...claims })
    .setProtectedHeader({ alg: TOKEN_ALG, kid: key.kid, typ: 'JWT' })
    .sign(key.privateKey);
  return { token, claims };
}

/** `15m`, `1h`, `90s`, `900` (seconds). */
export function parseTtl(s: string): number | undefined {
  const m = /^(\d{1,7})(s|m|h)?$/.exec(s.trim());
  if (!m) return undefined;
  const n = Number(m[1]);
  return m[2] === 'h' ? n * 3600 : m[2] === 'm' ? n * 60 : n;
}
