import { SignJWT, exportJWK, generateKeyPair, type JWK } from 'jose';
import { SESSION_AUDIENCE } from '../../xds-server/sessions.js';

/**
 * A session signing key of the tests' own (what the supervisor's key ring does in production): its
 * public JWK for the egress edge's JwtSessions, and session tokens (`sid`) signed with it.
 */
export interface TestSessionKey {
  jwk: JWK;
  token(sid: string, expSec?: number): Promise<string>;
}

export async function testSessionKey(kid = 'k1'): Promise<TestSessionKey> {
  const kp = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
  const jwk: JWK = { ...(await exportJWK(kp.publicKey)), kid, alg: 'EdDSA' };
  return {
    jwk,
    token: (sid, expSec = 600) =>
      new SignJWT({ sid })
        .setProtectedHeader({ alg: 'EdDSA', kid })
        .setAudience(SESSION_AUDIENCE)
        .setIssuedAt()
        .setExpirationTime(Math.floor(Date.now() / 1000) + expSec)
        .sign(kp.privateKey),
  };
}
