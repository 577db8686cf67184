import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SignJWT, exportJWK, generateKeyPair, type JWK } from 'jose';
import { e2eGate } from '../harness/e2e-gate.js';
import { createTestNet, type TestNet } from '../harness/netns.js';
import { createTestCa } from '../harness/test-ca.js';
import { eventually } from '../harness/ports.js';
import { httpGet, mcpPost, startMcpStack, type McpStack } from '../harness/mcp-stack.js';
import { MemorySandbox } from '../../mcp/testkit.js';
import { compileText } from '../../policy/compile.js';

/*
 * The `oidc` auth mode against an IdP of our own: an HTTPS JWKS endpoint in a test network namespace
 * (its certificate from a test CA), keys made here, tokens signed here as a customer IdP would. Envoy
 * fetches the JWKS itself (remote_jwks over its own cluster, strict TLS) and validates issuer,
 * audience, expiry and signature; the policy's caller claim names the caller for tool rules.
 */

const gate = e2eGate(['envoy', 'root', 'netns'], 'MCP ingress, oidc mode (remote JWKS)');
const ISSUER = 'https://idp.corp.test';
const AUDIENCE = 'portcullis-mcp-prod';

const JWKS_SERVER = `
const https = require('https'), fs = require('fs');
const [cert, key, jwks] = process.argv.slice(1);
let n = 0;
https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
  n++;
  console.log(JSON.stringify({ event: 'request', url: req.url, n }));
  if (req.url !== '/.well-known/jwks.json') { res.writeHead(404); res.end(); return; }
  const body = fs.readFileSync(jwks);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
  res.end(body);
}).listen(8443, '0.0.0.0', () => console.log(JSON.stringify({ event: 'listening' })));
`;

describe.skipIf(!gate.ok)('MCP ingress in oidc mode, with a real JWKS endpoint', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-oidc-'));
  let tn: TestNet;
  let idp: ChildProcess;
  let idpLog = '';
  let stack: McpStack;
  let idpKey: Awaited<ReturnType<typeof generateKeyPair>>;
  let rogueKey: Awaited<ReturnType<typeof generateKeyPair>>;

  const token = async (claims: Record<string, unknown>, o: { key?: typeof idpKey; kid?: string; iss?: string; aud?: string; expSec?: number } = {}) =>
    new SignJWT({ ...claims })
      .setProtectedHeader({ alg: 'ES256', kid: o.kid ?? 'idp-1', typ: 'JWT' })
      .setIssuer(o.iss ?? ISSUER)
      .setAudience(o.aud ?? AUDIENCE)
      .setIssuedAt()
      .setExpirationTime(Math.floor(Date.now() / 1000) + (o.expSec ?? 600))
      .sign((o.key ?? idpKey).privateKey);

  beforeAll(async () => {
    tn = await createTestNet({ hosts: ['idp'] });
    const ca = createTestCa();
    const caFile = path.join(tmp, 'idp-ca.pem');
    fs.writeFileSync(caFile, ca.certPem);
    const idpIp = tn.host('idp').ip;
    const cert = ca.issueServerCert({ dnsNames: ['idp.corp.test'], ips: [idpIp] });
    fs.writeFileSync(path.join(tmp, 'idp.crt'), cert.certPem);
    fs.writeFileSync(path.join(tmp, 'idp.key'), cert.keyPem, { mode: 0o600 });
    idpKey = await generateKeyPair('ES256');
    rogueKey = await generateKeyPair('ES256');
    const jwk: JWK = { ...(await exportJWK(idpKey.publicKey)), kid: 'idp-1', alg: 'ES256', use: 'sig' };
    fs.writeFileSync(path.join(tmp, 'jwks.json'), JSON.stringify({ keys: [jwk] }));
    idp = tn.spawnIn('idp', process.execPath, ['-e', JWKS_SERVER, path.join(tmp, 'idp.crt'), path.join(tmp, 'idp.key'), path.join(tmp, 'jwks.json')]);
    idp.stdout!.on('data', (d) => (idpLog += d));
    await eventually(() => idpLog.includes('"listening"'), 15_000, 'the IdP JWKS endpoint');

    const ir = compileText(
      `apiVersion: portcullis/v1
kind: Policy
deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }
egress: { rung: deny-all }
mcp:
  auth:
    mode: oidc
    issuer: ${ISSUER}
    audience: ${AUDIENCE}
    jwksUri: https://${idpIp}:8443/.well-known/jwks.json
    callerClaim: email
  tools:
    rules:
      - { callers: ["alice@corp.test"], tools: [exec, read_file], effect: allow }
      - { callers: ["*"], tools: [list_files], effect: allow }
`,
      { file: 'oidc.yaml', baseDir: tmp },
    );
    stack = await startMcpStack({ ir, sandbox: new MemorySandbox(), jwksCaFile: caFile });
  });

  afterAll(async () => {
    await stack?.close();
    idp?.kill('SIGKILL');
    await tn?.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('a token from the IdP works; Envoy fetched the JWKS itself; the caller is the policy\'s claim', async () => {
    const alice = await stack.client(await token({ sub: 'u-1001', email: 'alice@corp.test' }));
    try {
      expect((await alice.client.listTools()).tools.map((t) => t.name).sort()).toEqual(['exec', 'list_files', 'read_file']);
    } finally {
      await alice.close();
    }
    const bob = await stack.client(await token({ sub: 'u-1002', email: 'bob@corp.test' }));
    try {
      // bob is not named by the exec rule: the tool is absent from his list, and refused at Envoy
      expect((await bob.client.listTools()).tools.map((t) => t.name)).toEqual(['list_files']);
    } finally {
      await bob.close();
    }
    expect(idpLog).toContain('/.well-known/jwks.json');
  });

  it('refuses at Envoy, with the discovery pointer: wrong audience, wrong issuer, expired, unknown key, forged kid, no token', async () => {
    const initialize = { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } } };
    const bad = {
      wrongAudience: await token({ email: 'alice@corp.test' }, { aud: 'some-other-api' }),
      wrongIssuer: await token({ email: 'alice@corp.test' }, { iss: 'https://evil.test' }),
      expired: await token({ email: 'alice@corp.test' }, { expSec: -120 }),
      // signed by a key the IdP never published, under a kid it does not have
      unknownKey: await token({ email: 'alice@corp.test' }, { key: rogueKey, kid: 'rogue' }),
      // signed by another key but claiming the IdP's kid
      forgedKid: await token({ email: 'alice@corp.test' }, { key: rogueKey }),
      none: undefined,
    };
    const seenBefore = stack.gateway.counters().requests.POST ?? 0;
    for (const [name, t] of Object.entries(bad)) {
      const r = await mcpPost(stack.url, t, initialize);
      expect(r.status, name).toBe(401);
      expect(r.headers['www-authenticate'], name).toContain('/.well-known/oauth-protected-resource');
    }
    // the gateway never saw any of them
    expect(stack.gateway.counters().requests.POST ?? 0).toBe(seenBefore);
  });

  it('publishes RFC 9728 metadata naming the IdP as the authorization server', async () => {
    const r = await httpGet(`http://127.0.0.1:${stack.ingressPort}/.well-known/oauth-protected-resource`);
    expect(r.status).toBe(200);
    const doc = JSON.parse(r.body) as { resource: string; authorization_servers: string[] };
    expect(doc.authorization_servers).toEqual([ISSUER]);
    expect(doc.resource).toBe(stack.url);
  });
});
