import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findEnvoy } from '../../envoy/binary.js';
import { buildBootstrap, type BootstrapOptions } from '../../envoy/bootstrap.js';
import { EnvoyProcess, stopAllEnvoys } from '../../envoy/process.js';
import { e2eGate } from '../harness/e2e-gate.js';
import { goldenCases } from '../harness/golden.js';

const gate = e2eGate(['envoy'], 'bootstrap-validate');
const testdata = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../envoy/testdata');

function validate(envoy: string, file: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(envoy, ['--mode', 'validate', '--config-path', file, '--log-level', 'warn', '--disable-hot-restart'], { timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, output: `${stdout}${stderr}` });
    });
  });
}

describe.skipIf(!gate.ok)('Envoy accepts every bootstrap we build (envoy --mode validate)', () => {
  let envoy: string;
  let dir: string;
  const cases = goldenCases(testdata).filter((n) => n.startsWith('bootstrap-'));

  beforeAll(async () => {
    envoy = (await findEnvoy()).path;
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-bootstrap-validate-'));
  });
  afterAll(async () => {
    await stopAllEnvoys();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('has golden cases to check', () => expect(cases.length).toBeGreaterThanOrEqual(3));

  for (const name of cases) {
    it(name, async () => {
      const opts = YAML.parse(fs.readFileSync(path.join(testdata, `${name}.in.yaml`), 'utf8')) as BootstrapOptions;
      const file = path.join(dir, `${name}.json`);
      fs.writeFileSync(file, JSON.stringify(buildBootstrap(opts)));
      const r = await validate(envoy, file);
      expect(r.output).toContain('OK');
      expect(r.code).toBe(0);
    });
  }

  // Validate mode does not build everything (it accepts an unknown resource monitor name, for one):
  // also serve each case, with the admin on an ephemeral port and the xDS port moved where nothing listens.
  for (const name of cases) {
    it(`${name} serves`, async () => {
      const opts = YAML.parse(fs.readFileSync(path.join(testdata, `${name}.in.yaml`), 'utf8')) as BootstrapOptions;
      const xds = 'socketPath' in opts.xds ? { socketPath: path.join(dir, 'no-such.sock') } : { port: await deadPort() };
      const envoy = await EnvoyProcess.start({ bootstrap: { ...opts, xds, adminPort: 0 } });
      try {
        const stats = await envoy.admin.stats();
        expect(stats).toHaveProperty(['overload.envoy.resource_monitors.global_downstream_max_connections.pressure']);
        if (opts.maxHeapBytes !== undefined) {
          expect(stats).toHaveProperty(['overload.envoy.resource_monitors.fixed_heap.pressure']);
        }
        expect((await envoy.admin.serverInfo()).node.id).toBe(opts.nodeId);
      } finally {
        await envoy.stop();
      }
    });
  }

  it('fails on a bootstrap Envoy refuses (the check can fail)', async () => {
    const b = buildBootstrap({ nodeId: 'x', xds: { port: 18000 }, maxDownstreamConnections: 5 });
    const monitor = (b.overload_manager as { resource_monitors: { typed_config: Record<string, unknown> }[] }).resource_monitors[0]!;
    monitor.typed_config.max_active_downstream_connections = '0'; // violates its (validate.rules) gt: 0
    const file = path.join(dir, 'refused.json');
    fs.writeFileSync(file, JSON.stringify(b));
    const r = await validate(envoy, file);
    expect(r.code).not.toBe(0);
    expect(r.output).toContain('MaxActiveDownstreamConnections');
  });
});

/**
 * Where the xDS cluster points when no control plane should answer: port 1 on 127.0.0.1, privileged
 * and outside the ephemeral range, so no test binds it (a bound-then-released ephemeral port can be
 * taken by another suite's server in the meantime). deadPort() checks that nothing listens there.
 */
const NOTHING_LISTENS = 1;

async function deadPort(): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    const s = net.connect(NOTHING_LISTENS, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      reject(new Error(`something listens on 127.0.0.1:${NOTHING_LISTENS}; these tests need it closed`));
    });
    s.once('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNREFUSED' ? resolve() : reject(e)));
  });
  return NOTHING_LISTENS;
}
