import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { projectRoot } from '../../common/paths.js';
import { summarize, writeResult } from './machine.js';

/**
 * The first ten minutes, timed. Run directly (root, dockerd with runsc, the image built, `npm run build`):
 *   npx tsx test/bench/up.bench.ts [runs=10]
 * writes test/bench/results/up.json.
 *
 * - upToReady: from spawning `node dist/cli/portcullis.js up` (the built CLI `npm run up` execs) to its
 *   "ready" line: policy, audit log, CA + token key, supervisor (Docker + runsc checks, orphan sweep),
 *   control plane, MCP gateway, operator plane, Envoy started and running the policy, ingress answering.
 *   Each run uses a fresh data dir (the CA and keys are made: the first-run cost).
 * - readyToFirstCall: from ready to the first successful `exec true` of a fresh SDK client (connect,
 *   initialize, tools/call; includes creating the caller's gVisor sandbox).
 * - stop: SIGINT to exit (Envoy, the gateway, every sandbox torn down, planes closed, audit sealed).
 * - imageCheck: `bash sandbox/image/build.sh` when the image is already built (the cached path
 *   `npm run up` takes). A full image build is reported by that script itself (minutes; not repeated here).
 */

const runs = Number(process.argv[2] ?? 10);
const log = (s: string): void => void process.stderr.write(`[up-bench] ${s}\n`);
const cli = path.join(projectRoot(), 'dist', 'cli', 'portcullis.js');
if (!fs.existsSync(cli)) throw new Error('run `npm run build` first');

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

async function once(): Promise<{ upToReady: number; readyToFirstCall: number; stop: number }> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-up-bench-'));
  const [mcp, egress] = [await freePort(), await freePort()];
  const t0 = performance.now();
  const child = spawn(process.execPath, [cli, 'up', '--json', '--data-dir', dataDir, '--mcp', `127.0.0.1:${mcp}`, '--egress', `0.0.0.0:${egress}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  try {
    const ready = await new Promise<{ endpoints: { mcp: string }; token: { token: string } }>((resolve, reject) => {
      const t = setInterval(() => {
        const line = out.split('\n').find((l) => l.startsWith('{'));
        if (line) {
          clearInterval(t);
          resolve(JSON.parse(line));
        }
      }, 5);
      void exited.then((c) => {
        clearInterval(t);
        reject(new Error(`up exited ${c}: ${err}`));
      });
    });
    const upToReady = performance.now() - t0;
    const t1 = performance.now();
    const client = new Client({ name: 'up-bench', version: '1.0.0' });
    const transport = new StreamableHTTPClientTransport(new URL(ready.endpoints.mcp), { requestInit: { headers: { authorization: `Bearer ${ready.token.token}` } } });
    await client.connect(transport);
    const r = (await client.callTool({ name: 'exec', arguments: { command: ['true'] } })).structuredContent as { exitCode: number };
    if (r.exitCode !== 0) throw new Error(`exec true: ${JSON.stringify(r)}`);
    const readyToFirstCall = performance.now() - t1;
    await client.close();
    const t2 = performance.now();
    child.kill('SIGINT');
    const code = await exited;
    if (code !== 0) throw new Error(`up exited ${code} on SIGINT: ${err}`);
    return { upToReady, readyToFirstCall, stop: performance.now() - t2 };
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

const samples = { upToReady: [] as number[], readyToFirstCall: [] as number[], stop: [] as number[] };
for (let i = 0; i < runs; i++) {
  const s = await once();
  for (const k of Object.keys(samples) as (keyof typeof samples)[]) samples[k].push(s[k]);
  log(`run ${i + 1}/${runs}: ready ${s.upToReady.toFixed(0)} ms, first call +${s.readyToFirstCall.toFixed(0)} ms, stop ${s.stop.toFixed(0)} ms`);
}
const imageCheck: number[] = [];
for (let i = 0; i < 3; i++) {
  const t = performance.now();
  const r = spawnSync('bash', [path.join(projectRoot(), 'sandbox', 'image', 'build.sh')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`build.sh: ${r.stderr}`);
  imageCheck.push(performance.now() - t);
}
const result = {
  runs,
  goal: { upToReadyMs: 10_000 },
  upToReadyMs: summarize(samples.upToReady),
  readyToFirstCallMs: summarize(samples.readyToFirstCall),
  stopMs: summarize(samples.stop),
  imageCachedCheckMs: summarize(imageCheck),
};
log(JSON.stringify(result, null, 2));
log(`wrote ${writeResult('up', result)}`);
