import { execFile } from 'node:child_process';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { findEnvoy, INSTALL_HINT, PINNED_ENVOY_VERSION } from '../envoy/binary.js';
import { EXIT, type CliIo } from './io.js';

/**
 * `portcullis doctor`: every prerequisite of `portcullis up`, each with the exact command that fixes
 * it. Human output by default, `--json` for scripts; exit 0 when everything passes, 1 otherwise.
 */

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

function run(cmd: string, args: string[], timeoutMs = 20_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 127) : 0, stdout, stderr }),
    );
  });
}

/** Whether a TCP listener could bind host:port now. */
export function portFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, host, () => s.close(() => resolve(true)));
  });
}

export const SANDBOX_IMAGE_HINT = 'bash sandbox/image/build.sh';
export const PREREQS = 'sudo bash scripts/prereqs.sh';

export async function runChecks(opts: { ports?: number[]; image?: string } = {}): Promise<Check[]> {
  const checks: Check[] = [];
  const major = Number(process.versions.node.split('.')[0]);
  checks.push({
    name: 'node',
    ok: major >= 20,
    detail: `Node.js ${process.versions.node}`,
    ...(major >= 20 ? {} : { fix: 'install Node.js 20 or newer (Debian: apt-get install nodejs from NodeSource, or nvm install 20)' }),
  });
  try {
    const e = await findEnvoy();
    checks.push({ name: 'envoy', ok: true, detail: `Envoy ${e.version} at ${e.path} (${e.source})` });
  } catch (err) {
    checks.push({ name: 'envoy', ok: false, detail: (err as Error).message.split('\n')[0]!, fix: INSTALL_HINT });
  }
  const docker = await run('docker', ['info', '--format', '{{json .Runtimes}}']);
  const dockerOk = docker.code === 0;
  checks.push({
    name: 'docker',
    ok: dockerOk,
    detail: dockerOk ? 'Docker Engine reachable' : `Docker Engine not reachable: ${(docker.stderr || docker.stdout).trim().split('\n')[0] ?? ''}`,
    ...(dockerOk ? {} : { fix: `${PREREQS}   (installs docker.io and starts dockerd)` }),
  });
  const runscRegistered = dockerOk && docker.stdout.includes('"runsc"');
  checks.push({
    name: 'runsc-registered',
    ok: runscRegistered,
    detail: runscRegistered ? 'runsc is a Docker runtime' : dockerOk ? 'runsc is not registered with Docker' : 'cannot ask Docker (not reachable)',
    ...(runscRegistered ? {} : { fix: `${PREREQS}   (installs runsc and registers it in /etc/docker/daemon.json with --network=host)` }),
  });
  if (runscRegistered) {
    const image = opts.image ?? process.env.PORTCULLIS_SANDBOX_IMAGE ?? 'portcullis-sandbox:0.1.0';
    const has = await run('docker', ['image', 'inspect', image, '--format', '{{.Id}}']);
    if (has.code !== 0) {
      checks.push({ name: 'runsc-starts', ok: false, detail: `sandbox image ${image} is not built`, fix: SANDBOX_IMAGE_HINT });
    } else {
      const t0 = Date.now();
      const r = await run('docker', ['run', '--rm', '--runtime=runsc', '--network=none', image, 'true'], 60_000);
      checks.push({
        name: 'runsc-starts',
        ok: r.code === 0,
        detail: r.code === 0 ? `a gVisor container started and exited in ${Date.now() - t0} ms` : `a gVisor container failed: ${r.stderr.trim().split('\n').at(-1) ?? ''}`,
        ...(r.code === 0 ? {} : { fix: `${PREREQS}   then check /var/log/portcullis-dockerd.log` }),
      });
    }
  }
  for (const tool of ['ip', 'iptables']) {
    const r = await run(tool, tool === 'ip' ? ['-V'] : ['--version']);
    checks.push({
      name: tool,
      ok: r.code === 0,
      detail: r.code === 0 ? (r.stdout || r.stderr).trim().split('\n')[0]! : `${tool} not found`,
      ...(r.code === 0 ? {} : { fix: `apt-get install -y ${tool === 'ip' ? 'iproute2' : 'iptables'}` }),
    });
  }
  const root = process.getuid?.() === 0;
  checks.push({
    name: 'permissions',
    ok: root,
    detail: root ? 'running as root (firewall rules, Docker networks)' : 'not root: sandbox networks and firewall rules need root',
    ...(root ? {} : { fix: 'run as root (sudo portcullis up)' }),
  });
  for (const port of opts.ports ?? [15001, 8080]) {
    const free = await portFree(port);
    checks.push({
      name: `port-${port}`,
      ok: free,
      detail: free ? `127.0.0.1:${port} is free` : `127.0.0.1:${port} is in use`,
      ...(free ? {} : { fix: `stop what listens there (ss -ltnp 'sport = :${port}'), or start with another port` }),
    });
  }
  return checks;
}

export async function runDoctor(argv: string[], io: CliIo): Promise<number> {
  let json = false;
  try {
    json = !!parseArgs({ args: argv, options: { json: { type: 'boolean' } }, strict: true }).values.json;
  } catch (e) {
    io.stderr.write(`${(e as Error).message}\nusage: portcullis doctor [--json]\n`);
    return EXIT.usage;
  }
  const checks = await runChecks();
  const ok = checks.every((c) => c.ok);
  if (json) io.stdout.write(`${JSON.stringify({ ok, envoyVersion: PINNED_ENVOY_VERSION, checks }, null, 2)}\n`);
  else {
    for (const c of checks) {
      io.stdout.write(`${c.ok ? 'ok  ' : 'FAIL'} ${c.name.padEnd(18)} ${c.detail}\n`);
      if (!c.ok && c.fix) io.stdout.write(`     fix: ${c.fix}\n`);
    }
    io.stdout.write(ok ? '\nEverything portcullis up needs is here.\n' : `\n${checks.filter((c) => !c.ok).length} problem(s); each fix is above.\n`);
  }
  return ok ? EXIT.ok : EXIT.failure;
}
