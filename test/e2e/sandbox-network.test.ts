import { execFileSync, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventBus } from '../../common/events.js';
import { silentLogger } from '../../common/logger.js';
import { Supervisor } from '../../sandbox/supervisor.js';
import { imageAvailable, inventory, sandboxImage, sweepInstance, TCP_PROBE, testConfig } from '../../sandbox/testkit.js';
import { e2eGate, REQUIRE_E2E } from '../harness/e2e-gate.js';
import { createTestNet, type TestNet } from '../harness/netns.js';
import { eventually } from '../harness/ports.js';

/**
 * Issue 5, network: from inside a sandbox the Envoy egress listener (here a stand-in HTTP listener on
 * 0.0.0.0:<egress port>) is reachable, carrying the session credential; nothing else is — not the
 * upstream by a direct dial, not 169.254.169.254, not the host's other ports, not another sandbox, not
 * the Docker socket; no resolver answers for external names; no IPv6 path to the host.
 */

const gate = e2eGate(['docker', 'runsc', 'root', 'netns'], 'sandbox-network');
const image = gate.ok && imageAvailable();
if (gate.ok && !image) {
  const line = `[portcullis] sandbox-network: SKIPPING — image ${sandboxImage()} missing (bash sandbox/image/build.sh)`;
  if (REQUIRE_E2E) throw new Error(line);
  process.stderr.write(`\n${line}\n`);
}

const INSTANCE = 'e2e-net';

interface Seen {
  method: string;
  url: string;
  proxyAuth: string | undefined;
}

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '0.0.0.0', () => resolve((server.address() as net.AddressInfo).port)));
}

describe.skipIf(!gate.ok || !image)('sandbox network path (real Docker + runsc)', () => {
  let sup: Supervisor;
  let testNet: TestNet;
  let upstream: ChildProcess | undefined;
  const seen: Seen[] = [];
  const servers: net.Server[] = [];
  const ports: Record<string, number> = {};
  let a: { sessionId: string; ip: string; gateway: string; containerId: string; bridge: string };
  let b: { sessionId: string; ip: string; gateway: string; containerId: string; bridge: string };

  beforeAll(async () => {
    // The egress listener stand-in: an HTTP proxy endpoint that records what arrives.
    const egress = http.createServer((req, res) => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', proxyAuth: req.headers['proxy-authorization'] });
      res.end('egress-listener-ok');
    });
    egress.on('connect', (req: http.IncomingMessage, sock: net.Socket) => {
      sock.on('error', () => undefined);
      seen.push({ method: 'CONNECT', url: req.url ?? '', proxyAuth: req.headers['proxy-authorization'] });
      sock.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n');
    });
    servers.push(egress);
    ports.egress = await listen(egress);
    // Stand-ins for the host's other services, all on 0.0.0.0.
    for (const name of ['xds', 'envoyAdmin', 'operator', 'minter']) {
      const s = net.createServer((c) => {
        c.on('error', () => undefined);
        c.end('hello\n');
      });
      servers.push(s);
      ports[name] = await listen(s);
    }
    testNet = await createTestNet({ hosts: ['up'] });
    upstream = testNet.spawnIn('up', 'python3', ['-m', 'http.server', '--bind', '0.0.0.0', '8080'], { stdio: 'ignore' });
    await eventually(
      () =>
        new Promise<boolean>((resolve) => {
          const s = net.connect({ host: testNet.host('up').ip, port: 8080, timeout: 500 }, () => {
            s.destroy();
            resolve(true);
          });
          s.on('error', () => resolve(false));
          s.on('timeout', () => {
            s.destroy();
            resolve(false);
          });
        }),
      10_000,
      'the upstream in its namespace',
    );

    await sweepInstance(INSTANCE);
    sup = new Supervisor({ config: testConfig(INSTANCE, { egress: { port: ports.egress! } }), logger: silentLogger(), events: new EventBus() });
    await sup.start();
    const [sa, sb] = await Promise.all([sup.createSession('alice'), sup.createSession('bob')]);
    const da = sup.describe(sa.sessionId)!;
    const db = sup.describe(sb.sessionId)!;
    a = { sessionId: sa.sessionId, ...da };
    b = { sessionId: sb.sessionId, ...db };
  });

  afterAll(async () => {
    await sup?.stop().catch(() => undefined);
    await sweepInstance(INSTANCE).catch(() => undefined);
    upstream?.kill('SIGKILL');
    await testNet?.destroy();
    for (const s of servers) s.close();
  });

  async function probe(sessionId: string, targets: [string, string, number][]): Promise<Record<string, string>> {
    const r = await sup.exec(sessionId, { command: ['python3', '-c', TCP_PROBE], stdin: JSON.stringify(targets), timeoutMs: 30_000 });
    expect(r.outcome, r.stderr).toBe('exited');
    return JSON.parse(r.stdout) as Record<string, string>;
  }

  it('sandboxes sit on separate internal networks, each with its own bridge', () => {
    expect(a.gateway).not.toBe(b.gateway);
    expect(a.bridge).not.toBe(b.bridge);
    expect(a.ip.startsWith('198.18.') || a.ip.startsWith('198.19.')).toBe(true);
  });

  it('reaches the egress listener through the proxy variables, carrying a credential bound to the session and container', async () => {
    seen.length = 0;
    const r = await sup.exec(a.sessionId, { command: ['curl', '-sS', '-m', '10', 'http://upstream.example/hello'] });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('egress-listener-ok');
    const req = seen.find((s) => s.url === 'http://upstream.example/hello');
    expect(req?.proxyAuth).toMatch(/^Basic /);
    const [user, pass] = Buffer.from(req!.proxyAuth!.slice(6), 'base64').toString().split(':');
    expect(user).toBe('session');
    const claims = await sup.verifyCredential(decodeURIComponent(pass!), { sessionId: a.sessionId, containerId: a.containerId });
    expect(claims.sid).toBe(a.sessionId);
    // HTTPS goes through CONNECT on the same listener, with the same credential
    const h = await sup.exec(a.sessionId, { command: ['curl', '-sS', '-m', '10', 'https://upstream.example/'] });
    expect(h.exitCode).not.toBe(0);
    const connect = seen.find((s) => s.method === 'CONNECT');
    expect(connect?.url).toBe('upstream.example:443');
    expect(connect?.proxyAuth).toBe(req!.proxyAuth);
    // and the other session presents its own credential, not A's
    const other = await sup.verifyCredential(decodeURIComponent(pass!), { sessionId: b.sessionId }).catch((e: { code: string }) => e.code);
    expect(other).toBe('session_credential_missing');
  });

  it('reaches nothing but the egress listener', async () => {
    const hostV4 = Object.values(os.networkInterfaces())
      .flat()
      .filter((i) => i && i.family === 'IPv4' && !i.internal && !/^198\.1[89]\./.test(i.address))
      .map((i) => i!.address);
    const hostV6 = Object.values(os.networkInterfaces())
      .flat()
      .filter((i) => i && i.family === 'IPv6' && !i.internal && i.scopeid === 0)
      .map((i) => i!.address);
    const targets: [string, string, number][] = [
      ['egress', a.gateway, ports.egress!],
      ['xds', a.gateway, ports.xds!],
      ['envoyAdmin', a.gateway, ports.envoyAdmin!],
      ['operator', a.gateway, ports.operator!],
      ['minter', a.gateway, ports.minter!],
      ['ssh', a.gateway, 22],
      ['dockerTcp', a.gateway, 2375],
      ['dockerTls', a.gateway, 2376],
      ['upstreamDirect', testNet.host('up').ip, 8080],
      ['testNetRoot', testNet.rootIp, ports.egress!],
      ['metadata', '169.254.169.254', 80],
      ['otherSandboxAgent', b.ip, 7070],
      ['otherSandboxGatewayEgress', b.gateway, ports.egress!],
      ['otherSandboxGatewayXds', b.gateway, ports.xds!],
      ['docker0', '198.18.0.1', ports.egress!],
      ...hostV4.flatMap((ip, i): [string, string, number][] => [
        [`host4-${i}-egress`, ip, ports.egress!],
        [`host4-${i}-xds`, ip, ports.xds!],
      ]),
      ...hostV6.map((ip, i): [string, string, number] => [`host6-${i}-egress`, ip, ports.egress!]),
      ['loopback6', '::1', ports.egress!],
    ];
    const res = await probe(a.sessionId, targets);
    expect(res.egress).toBe('connected');
    const reached = Object.entries(res).filter(([k, v]) => k !== 'egress' && v === 'connected');
    expect(reached).toEqual([]);
    expect(Object.keys(res)).toHaveLength(targets.length);

    // The same services answer from the host: the failures above are the sandbox's, not missing listeners.
    for (const port of [ports.xds!, ports.operator!]) {
      await new Promise<void>((resolve, reject) => {
        const s = net.connect({ host: '127.0.0.1', port }, () => {
          s.destroy();
          resolve();
        });
        s.on('error', reject);
      });
    }
    await new Promise<void>((resolve, reject) => {
      const s = net.connect({ host: testNet.host('up').ip, port: 8080 }, () => {
        s.destroy();
        resolve();
      });
      s.on('error', reject);
    });
  });

  it('the other sandbox cannot reach the first one either, and reaches its own egress listener', async () => {
    const res = await probe(b.sessionId, [
      ['egress', b.gateway, ports.egress!],
      ['firstAgent', a.ip, 7070],
      ['firstGateway', a.gateway, ports.egress!],
    ]);
    expect(res).toEqual({ egress: 'connected', firstAgent: expect.not.stringMatching(/^connected$/), firstGateway: expect.not.stringMatching(/^connected$/) });
  });

  it('has no Docker socket', async () => {
    const r = await sup.exec(a.sessionId, {
      command: [
        'python3',
        '-c',
        'import os,socket\nfor p in ["/var/run/docker.sock","/run/docker.sock","/var/run/docker","/run/containerd/containerd.sock"]:\n  print(p, os.path.exists(p))\nprint("mounts", "docker.sock" in open("/proc/mounts").read())',
      ],
    });
    expect(r.stdout).not.toMatch(/True/);
    expect(r.stdout).toMatch(/mounts False/);
  });

  it('no resolver answers for external names', async () => {
    const script = `
import json, socket, struct, threading, random
names = ["example.com", "upstream.example", "pypi.org", "github.com"]
res = {}
def lookup(n):
    try:
        res[n] = "resolved " + socket.getaddrinfo(n, 443)[0][4][0]
    except Exception as e:
        res[n] = "failed: " + type(e).__name__
def query(server, n):
    # one raw A query; an answer with records counts as resolution
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(q, (server, 53))
        data = s.recv(4096)
        an = struct.unpack(">H", data[6:8])[0]
        res[server + " " + n] = "answers %d rcode %d" % (an, data[3] & 15)
    except Exception as e:
        res[server + " " + n] = "failed: " + type(e).__name__
ts = [threading.Thread(target=lookup, args=(n,)) for n in names]
ts += [threading.Thread(target=query, args=(srv, "example.com")) for srv in ["127.0.0.11", "${a.gateway}"]]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(res))
`;
    const r = await sup.exec(a.sessionId, { command: ['python3', '-c', script], timeoutMs: 30_000 });
    const res = JSON.parse(r.stdout) as Record<string, string>;
    for (const [k, v] of Object.entries(res)) {
      expect(v, k).not.toMatch(/^resolved/);
      expect(v, k).not.toMatch(/^answers [1-9]/);
    }
    expect(Object.keys(res)).toHaveLength(6);
  });

  it('has no IPv6 path: no address in the sandbox, none on the bridge, ip6tables drops', async () => {
    const r = await sup.exec(a.sessionId, { command: ['python3', '-c', 'print(repr(open("/proc/net/if_inet6").read()))'] });
    expect(r.stdout.trim()).toBe("''");
    const v6 = execFileSync('ip', ['-6', '-o', 'addr', 'show', 'dev', a.bridge], { encoding: 'utf8' });
    expect(v6.trim()).toBe('');
    const chain = execFileSync('ip6tables', ['-S', 'PORTCULLIS-IN'], { encoding: 'utf8' });
    expect(chain).toMatch(/-i pcx\+ .*-j DROP/);
  });

  it('revoke drops the egress path at once: a connection already open to the listener carries nothing more', async () => {
    const c = await sup.createSession('carol');
    const gw = sup.describe(c.sessionId)!.gateway;
    // one keep-alive connection, a request every 100 ms for 6 s; prints when each answer came back
    const script = [
      'import socket, time, json',
      `s = socket.create_connection(("${gw}", ${ports.egress!}), timeout=5)`,
      's.settimeout(0.5)',
      'ok = []',
      'end = time.time() + 6',
      'while time.time() < end:',
      '    try:',
      '        s.sendall(b"GET /tick HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")',
      '        buf = b""',
      '        while b"egress-listener-ok" not in buf:',
      '            d = s.recv(4096)',
      '            if not d: raise OSError("closed")',
      '            buf += d',
      '        ok.append(time.time())',
      '    except OSError:',
      '        pass',
      '    time.sleep(0.1)',
      'print(json.dumps(ok))',
    ].join('\n');
    const run = sup.exec(c.sessionId, { command: ['python3', '-c', script], timeoutMs: 30_000 });
    await new Promise((r) => setTimeout(r, 2000));
    const revokedAt = Date.now() / 1000;
    sup.revoke(c.sessionId, 'revoked');
    const r = await run;
    expect(r.exitCode, r.stderr).toBe(0);
    const answers = JSON.parse(r.stdout) as number[];
    expect(answers.filter((t) => t < revokedAt).length).toBeGreaterThan(5);
    // nothing answered later than a moment after the revoke (the rule removal itself takes a few ms)
    expect(answers.filter((t) => t > revokedAt + 0.5)).toEqual([]);
    // the sandbox itself still runs (exec answers), and it gets no new credential
    expect((await sup.exec(c.sessionId, { command: ['true'] })).exitCode).toBe(0);
    await expect(sup.rotateCredential(c.sessionId)).rejects.toMatchObject({ code: 'session_revoked' });
    await sup.destroySession(c.sessionId, 'test');
  });

  it('the firewall rules and the network go with the sandbox', async () => {
    const before = await inventory(INSTANCE);
    const tagged = (id: string) => before.rules.filter((r) => r.includes(id));
    const bId = sup.describe(b.sessionId)!.sandboxId;
    expect(tagged(bId)).toHaveLength(2);
    await sup.destroySession(b.sessionId, 'test');
    const after = await inventory(INSTANCE);
    expect(after.rules.filter((r) => r.includes(bId))).toEqual([]);
    expect(after.networks.some((n) => n.includes(bId))).toBe(false);
    expect(after.containers).toHaveLength(1);
  });
});
