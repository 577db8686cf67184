import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventBus } from '../../common/events.js';
import { silentLogger } from '../../common/logger.js';
import { Supervisor } from '../../sandbox/supervisor.js';
import { imageAvailable, sandboxImage, sweepInstance, testConfig } from '../../sandbox/testkit.js';
import { e2eGate, REQUIRE_E2E } from '../harness/e2e-gate.js';
import { freePort } from '../harness/ports.js';
import { createTestCa } from '../harness/test-ca.js';

/**
 * Issue 5, secrets: the sandbox environment comes from an allowlist (secret-looking names stripped,
 * the host's environment never inherited), nothing secret is on argv, and an in-guest scan of the
 * environment, /proc/<pid>/environ, /proc/<pid>/cmdline and the whole filesystem finds no upstream
 * credential, no CA key and no host token. The deployment CA certificate is in the trust store.
 */

const gate = e2eGate(['docker', 'runsc', 'root'], 'sandbox-secrets');
const image = gate.ok && imageAvailable();
if (gate.ok && !image) {
  const line = `[portcullis] sandbox-secrets: SKIPPING — image ${sandboxImage()} missing (bash sandbox/image/build.sh)`;
  if (REQUIRE_E2E) throw new Error(line);
  process.stderr.write(`\n${line}\n`);
}

const INSTANCE = 'e2e-secrets';
const secret = (tag: string) => `${tag}-${randomBytes(12).toString('hex')}`;

/** Inside the sandbox: needles on stdin, scan env, every /proc/<pid>/{environ,cmdline}, the filesystem. */
const SCAN = `
import json, os, sys
needles = [n.encode() for n in json.load(sys.stdin)]
hits = []
def look(where, data):
    for i, n in enumerate(needles):
        if n in data:
            hits.append([where, i])
look("os.environ", "\\n".join("%s=%s" % kv for kv in os.environ.items()).encode())
procs = 0
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    procs += 1
    for f in ("environ", "cmdline"):
        try:
            with open("/proc/%s/%s" % (pid, f), "rb") as fh:
                look("/proc/%s/%s" % (pid, f), fh.read())
        except OSError:
            pass
files = 0
skipped = 0
for root, dirs, names in os.walk("/", topdown=True):
    if root == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    for name in names:
        p = os.path.join(root, name)
        try:
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            if os.path.getsize(p) > 4 * 1024 * 1024:
                skipped += 1
                continue
            with open(p, "rb") as fh:
                look(p, fh.read())
            files += 1
        except OSError:
            skipped += 1
print(json.dumps({"hits": hits, "procs": procs, "files": files, "skipped": skipped}))
`;

describe.skipIf(!gate.ok || !image)('sandbox secrets (real Docker + runsc)', () => {
  let sup: Supervisor;
  let dir: string;
  let sessionId: string;
  let containerId: string;
  let gateway: string;
  let egressPort: number;
  let tlsServer: https.Server | undefined;
  const ca = createTestCa({ commonName: 'Portcullis Deployment CA (e2e)' });
  const hostSecrets: Record<string, string> = {
    UPSTREAM_API_KEY: secret('upstream-api-key'),
    PORTCULLIS_OPERATOR_TOKEN: secret('operator-token'),
    AWS_SECRET_ACCESS_KEY: secret('aws-secret'),
    DB_PASSWORD: secret('db-password'),
    HOST_ONLY_SETTING: secret('host-env'),
  };
  const upstreamCredential = secret('upstream-credential-file');
  const callerSecrets = { GITHUB_TOKEN: secret('gh'), OPENAI_API_KEY: secret('openai'), my_password: secret('pw'), SOME_SECRET: secret('s') };
  const allowedMarker = secret('allowed');
  const saved: Record<string, string | undefined> = {};
  const caKeyLines = ca.keyPem.split('\n').filter((l) => l && !l.startsWith('-----')).slice(1, 3);

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-secrets-'));
    fs.writeFileSync(path.join(dir, 'deployment-ca.pem'), ca.certPem, { mode: 0o644 });
    fs.writeFileSync(path.join(dir, 'deployment-ca.key'), ca.keyPem, { mode: 0o600 });
    fs.mkdirSync(path.join(dir, 'secrets'));
    fs.writeFileSync(path.join(dir, 'secrets', 'example-api.token'), upstreamCredential, { mode: 0o600 });
    for (const [k, v] of Object.entries(hostSecrets)) {
      saved[k] = process.env[k];
      process.env[k] = v;
    }
    egressPort = await freePort('0.0.0.0');
    await sweepInstance(INSTANCE);
    sup = new Supervisor({
      config: testConfig(INSTANCE, { egress: { port: egressPort }, caCertPemPath: path.join(dir, 'deployment-ca.pem') }),
      logger: silentLogger(),
      events: new EventBus(),
    });
    await sup.start();
    const s = await sup.createSession('alice');
    sessionId = s.sessionId;
    ({ containerId, gateway } = sup.describe(sessionId)!);
    // a long-lived process started with the caller's env additions (filtered), for the /proc scan
    const bg = await sup.exec(sessionId, {
      command: ['sh', '-c', 'sleep 600 >/dev/null 2>&1 & echo started'],
      env: { ...callerSecrets, GIT_AUTHOR_NAME: allowedMarker, NOT_ALLOWLISTED: 'x', HTTP_PROXY: 'http://evil.example:1' },
    });
    expect(bg.stdout.trim()).toBe('started');
  });

  afterAll(async () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    tlsServer?.close();
    await sup?.stop().catch(() => undefined);
    await sweepInstance(INSTANCE).catch(() => undefined);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the caller env is filtered: secret-looking names stripped, reserved names kept, allowlisted ones passed', async () => {
    const r = await sup.exec(sessionId, {
      command: ['sh', '-c', 'env'],
      env: { ...callerSecrets, GIT_AUTHOR_NAME: allowedMarker, NOT_ALLOWLISTED: 'x', HTTP_PROXY: 'http://evil.example:1', LD_PRELOAD: '/tmp/x.so' },
    });
    const env = Object.fromEntries(r.stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    for (const k of Object.keys(callerSecrets)) expect(env[k], k).toBeUndefined();
    for (const k of Object.keys(hostSecrets)) expect(env[k], k).toBeUndefined();
    expect(env.NOT_ALLOWLISTED).toBeUndefined();
    expect(env.LD_PRELOAD).toBeUndefined();
    expect(env.GIT_AUTHOR_NAME).toBe(allowedMarker);
    expect(env.HTTP_PROXY).toMatch(new RegExp(`^http://session:[^@]+@${gateway.replace(/\./g, '\\.')}:${egressPort}$`));
  });

  it('an in-guest scan of env, /proc/*/environ, /proc/*/cmdline and the filesystem finds no secret', async () => {
    const marker = secret('written-file');
    await sup.writeFile(sessionId, 'notes/marker.txt', marker);
    const needles = [
      ...Object.values(hostSecrets),
      ...Object.values(callerSecrets),
      upstreamCredential,
      ...caKeyLines,
      // positive controls: must be found, or the scan is blind
      allowedMarker,
      marker,
    ];
    const controls = new Set([needles.length - 2, needles.length - 1]);
    const r = await sup.exec(sessionId, { command: ['python3', '-c', SCAN], stdin: JSON.stringify(needles), timeoutMs: 120_000 });
    expect(r.outcome, r.stderr).toBe('exited');
    const res = JSON.parse(r.stdout) as { hits: [string, number][]; procs: number; files: number };
    const bad = res.hits.filter(([, i]) => !controls.has(i));
    expect(bad).toEqual([]);
    // the controls: the allowlisted value is in the background process's environ, the file on disk
    expect(res.hits.some(([w, i]) => i === needles.length - 2 && /^\/proc\/\d+\/environ$/.test(w))).toBe(true);
    expect(res.hits.some(([w, i]) => i === needles.length - 1 && w === '/workspace/notes/marker.txt')).toBe(true);
    expect(res.procs).toBeGreaterThanOrEqual(3);
    expect(res.files).toBeGreaterThan(1000);
  });

  it('argv of every process is free of the credential; the session credential lives only in the proxy variables', async () => {
    const r = await sup.exec(sessionId, {
      command: ['python3', '-c', 'import os\nfor p in os.listdir("/proc"):\n  if p.isdigit():\n    try: print(p, open("/proc/%s/cmdline" % p, "rb").read().replace(b"\\0", b" ").decode())\n    except OSError: pass'],
    });
    expect(r.stdout).toMatch(/^1 \/usr\/bin\/python3 -I -S -B -c /m);
    expect(r.stdout).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\./);
    expect(r.stdout).not.toMatch(/session:/);
  });

  it('the container manifest (docker inspect) holds no secret and no credential', async () => {
    const info = await new Docker().getContainer(containerId).inspect();
    const manifest = JSON.stringify({ env: info.Config.Env, cmd: info.Config.Cmd, labels: info.Config.Labels, binds: info.HostConfig.Binds });
    for (const v of [...Object.values(hostSecrets), ...Object.values(callerSecrets), upstreamCredential, ...caKeyLines]) expect(manifest).not.toContain(v);
    expect(manifest).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\./);
    expect(info.Config.Env?.some((e) => e.startsWith('HTTP_PROXY='))).toBe(false);
    expect(info.HostConfig.Binds?.every((b) => b.endsWith(':ro'))).toBe(true);
    expect(info.HostConfig.Binds?.some((b) => b.includes(dir) || /\.key(:|$)/.test(b))).toBe(false);
  });

  it('the deployment CA is in the trust store: curl and Python verify a server it issued, without flags', async () => {
    const leaf = ca.issueServerCert({ dnsNames: ['egress.test'], ips: [gateway] });
    tlsServer = https.createServer({ key: leaf.keyPem, cert: leaf.chainPem }, (_req, res) => res.end('tls-ok'));
    tlsServer.on('tlsClientError', () => undefined);
    await new Promise<void>((resolve) => tlsServer!.listen(egressPort, '0.0.0.0', resolve));
    (tlsServer as unknown as net.Server).on('connection', (s: net.Socket) => s.on('error', () => undefined));
    const url = `https://${gateway}:${egressPort}/`;
    const curl = await sup.exec(sessionId, { command: ['curl', '-sS', '--noproxy', '*', '-m', '10', url] });
    expect(curl.stderr).toBe('');
    expect(curl.stdout).toBe('tls-ok');
    const py = await sup.exec(sessionId, {
      command: [
        'python3',
        '-c',
        `import urllib.request, ssl\nop = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl.create_default_context()))\nprint(op.open("${url}", timeout=10).read().decode())`,
      ],
      env: {},
    });
    expect(py.stderr).toBe('');
    expect(py.stdout.trim()).toBe('tls-ok');
    const files = await sup.exec(sessionId, { command: ['sh', '-c', 'cat "$NODE_EXTRA_CA_CERTS"; echo ---; echo "$SSL_CERT_FILE $REQUESTS_CA_BUNDLE"; grep -c "BEGIN CERTIFICATE" "$SSL_CERT_FILE"'] });
    const [extra, rest] = files.stdout.split('---\n');
    expect(extra).toBe(ca.certPem.endsWith('\n') ? ca.certPem : `${ca.certPem}\n`);
    expect(rest).toMatch(/^\/etc\/ssl\/certs\/ca-certificates\.crt \/etc\/ssl\/certs\/ca-certificates\.crt\n/);
    expect(Number(rest!.split('\n')[1])).toBeGreaterThan(50);
    // a server signed by another CA is refused
    tlsServer.close();
    const other = createTestCa().issueServerCert({ ips: [gateway] });
    tlsServer = https.createServer({ key: other.keyPem, cert: other.chainPem }, (_req, res) => res.end('tls-ok'));
    tlsServer.on('tlsClientError', () => undefined);
    await new Promise<void>((resolve) => tlsServer!.listen(egressPort, '0.0.0.0', resolve));
    const refused = await sup.exec(sessionId, { command: ['curl', '-sS', '--noproxy', '*', '-m', '10', url] });
    expect(refused.exitCode).toBe(60);
  });
});
