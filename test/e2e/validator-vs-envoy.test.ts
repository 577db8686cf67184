import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BOOTSTRAP_TYPE_URL, bootstrapWithFixtures } from '../../envoy/api/resource.fixtures.js';
import { decodeResource, encodeResource, validateResource } from '../../envoy/api/resource.js';
import { EXT, XDS } from '../../envoy/api/type-urls.js';
import { e2eGate } from '../harness/e2e-gate.js';

/**
 * The pre-push validator against the real Envoy: what it accepts (JSON, and our own protobuf
 * encoding) Envoy accepts; what it rejects Envoy rejects; and semantic errors it deliberately
 * leaves to Envoy are indeed rejected by Envoy.
 */

const gate = e2eGate(['envoy'], 'validator-vs-envoy');

type Json = Record<string, any>;

function envoyValidate(file: string): Promise<{ code: number; output: string }> {
  const bin = process.env.ENVOY_BIN ?? 'envoy';
  return new Promise((resolve) => {
    execFile(bin, ['--mode', 'validate', '-c', file, '--log-level', 'warn', '--disable-hot-restart'], { timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, output: `${stdout}${stderr}` });
    });
  });
}

const listenerOf = (b: Json): Json => b.static_resources.listeners[0];
const hcmOf = (b: Json): Json => listenerOf(b).filter_chains[0].filters[0].typed_config;
const clusterOf = (b: Json): Json => b.static_resources.clusters[0];

describe.skipIf(!gate.ok)('validator vs envoy --mode validate', () => {
  let dir: string;
  let n = 0;
  const write = (name: string, content: string | Uint8Array): string => {
    const file = path.join(dir, `${n++}-${name}`);
    fs.writeFileSync(file, content);
    return file;
  };

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-validator-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('Envoy accepts the fixtures as JSON, as our protobuf encoding, and as our decoding of it', async () => {
    const boot = bootstrapWithFixtures();
    expect(validateResource(BOOTSTRAP_TYPE_URL, '', boot)).toEqual([]);
    const json = await envoyValidate(write('boot.json', JSON.stringify(boot)));
    expect(json.output).toContain('OK');
    expect(json.code).toBe(0);

    const bytes = encodeResource(BOOTSTRAP_TYPE_URL, '', boot);
    const pb = await envoyValidate(write('boot.pb', bytes));
    expect(pb.output).toContain('OK');
    expect(pb.code).toBe(0);

    const decoded = await envoyValidate(write('decoded.json', JSON.stringify(decodeResource(BOOTSTRAP_TYPE_URL, bytes))));
    expect(decoded.output).toContain('OK');
    expect(decoded.code).toBe(0);
  });

  const PGV = /Proto constraint validation failed/;
  const PARSE = /Unable to parse JSON as proto|INVALID_ARGUMENT/;
  const rejectedByBoth: [string, string, (b: Json) => void, string, string, RegExp][] = [
    ['empty stat_prefix', 'listener', (b) => (hcmOf(b).stat_prefix = ''), 'filter_chains[0].filters[0].typed_config.stat_prefix', 'string.min_len = 1', PGV],
    ['port above 65535', 'listener', (b) => (listenerOf(b).address.socket_address.port_value = 70000), 'address.socket_address.port_value', 'uint32.lte = 65535', PGV],
    ['HCM without route_specifier', 'listener', (b) => delete hcmOf(b).route_config, 'filter_chains[0].filters[0].typed_config', 'oneof.required', PGV],
    ['virtual host without domains', 'listener', (b) => (hcmOf(b).route_config.virtual_hosts[0].domains = []), 'filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].domains', 'repeated.min_items = 1', PGV],
    ['unknown field', 'listener', (b) => (hcmOf(b).stat_prefx = 'x'), 'filter_chains[0].filters[0].typed_config.stat_prefx', 'unknown field', PARSE],
    ['unknown Any type', 'listener', (b) => (hcmOf(b).http_filters[1].typed_config['@type'] = `${EXT.router}Nope`), 'filter_chains[0].filters[0].typed_config.http_filters[1].typed_config', 'any.type_url', PARSE],
    ['header name with a newline', 'listener', (b) => (hcmOf(b).route_config.virtual_hosts[0].request_headers_to_remove = ['x-a\nb']), 'filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].request_headers_to_remove[0]', 'repeated.items.string.well_known_regex = HTTP_HEADER_NAME', PGV],
    ['negative duration in a field without rules', 'listener', (b) => (hcmOf(b).stream_idle_timeout = '-0.5s'), 'filter_chains[0].filters[0].typed_config.stream_idle_timeout', 'envoy.duration_range', /Expected positive duration/],
    ['duration beyond Envoy range', 'listener', (b) => (hcmOf(b).stream_idle_timeout = '9223372036s'), 'filter_chains[0].filters[0].typed_config.stream_idle_timeout', 'envoy.duration_range', /Duration out-of-range/],
    ['zero connect_timeout', 'cluster', (b) => (clusterOf(b).connect_timeout = '0s'), 'connect_timeout', 'duration.gt = 0s', PGV],
    ['bad enum name', 'cluster', (b) => (clusterOf(b).lb_policy = 'ROUND_ROBINN'), 'lb_policy', 'enum.name', PARSE],
    ['bad duration string', 'cluster', (b) => (clusterOf(b).connect_timeout = '250ms'), 'connect_timeout', 'duration.format', PARSE],
    ['two members of a oneof', 'cluster', (b) => (clusterOf(b).cluster_type = { name: 'envoy.clusters.dynamic_forward_proxy', typed_config: { '@type': EXT.dfpCluster, dns_cache_config: { name: 'c' } } }), 'cluster_type', 'oneof', PARSE],
  ];

  for (const [what, kind, mutate, where, rule, envoySays] of rejectedByBoth) {
    it(`both reject: ${what}`, async () => {
      const boot = bootstrapWithFixtures();
      mutate(boot);
      const resource = kind === 'listener' ? listenerOf(boot) : clusterOf(boot);
      const issues = validateResource(kind === 'listener' ? XDS.listener : XDS.cluster, resource.name, resource);
      expect(issues.map((i) => [i.path, i.rule])).toContainEqual([where, rule]);
      const r = await envoyValidate(write('bad.json', JSON.stringify(boot)));
      expect(r.code).not.toBe(0);
      expect(r.output).toMatch(envoySays);
    });
  }

  it('never rejects what Envoy accepts (random single-field mutations of the fixtures)', async () => {
    // Two input forms are refused on purpose although Envoy's JSON parser takes them: `null` as a
    // list item and an object for a Duration. Both are translator bugs; they stay out of the pool.
    const pool: unknown[] = ['', 0, -1, 70000, '0s', '-1s', '5s', 'x', 'x y', 'a\nb', 'AUTO', 'NaN', '1', 1, 1.5, true, false, [], 4294967296];
    const leaves = (o: unknown, p: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] => {
      if (o && typeof o === 'object') {
        for (const [k, v] of Object.entries(o)) if (k !== '@type') leaves(v, [...p, Array.isArray(o) ? Number(k) : k], out);
      } else out.push(p);
      return out;
    };
    const paths = leaves(bootstrapWithFixtures());
    let rejectedByUs = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...paths), fc.constantFrom(...pool), async (p, v) => {
        const boot = bootstrapWithFixtures();
        let o: Json = boot;
        for (const k of p.slice(0, -1)) o = o[k];
        o[p[p.length - 1]!] = v;
        const ours = validateResource(BOOTSTRAP_TYPE_URL, '', boot);
        if (ours.length === 0) return; // Envoy may still refuse: semantic checks are its own
        rejectedByUs++;
        const r = await envoyValidate(write('mutated.json', JSON.stringify(boot)));
        expect(r.code, `${p.join('.')} = ${JSON.stringify(v)}: we said ${ours.map((i) => i.rule).join(', ')}`).not.toBe(0);
      }),
      { numRuns: 60, seed: 20240601 },
    );
    expect(rejectedByUs).toBeGreaterThan(10);
  });

  const leftToEnvoy: [string, (b: Json) => void, RegExp][] = [
    [
      'two virtual hosts with the same wildcard domain',
      (b) => {
        const vhs = hcmOf(b).route_config.virtual_hosts;
        vhs.push({ ...vhs[1], name: 'deny-again' });
      },
      /wildcard domain|duplicate/i,
    ],
    [
      'a route to a cluster that does not exist',
      (b) => (hcmOf(b).route_config.virtual_hosts[0].routes[1].route.cluster = 'nowhere'),
      /nowhere/,
    ],
    [
      'an HTTP filter config in a network filter slot',
      (b) => (listenerOf(b).filter_chains[0].filters[0] = { name: 'envoy.filters.http.router', typed_config: { '@type': EXT.router } }),
      /router|factory|network filter/i,
    ],
  ];

  for (const [what, mutate, envoySays] of leftToEnvoy) {
    it(`validator accepts, Envoy rejects: ${what}`, async () => {
      const boot = bootstrapWithFixtures();
      mutate(boot);
      expect(validateResource(BOOTSTRAP_TYPE_URL, '', boot)).toEqual([]);
      const r = await envoyValidate(write('semantic.json', JSON.stringify(boot)));
      expect(r.code).not.toBe(0);
      expect(r.output).toMatch(envoySays);
    });
  }
});
