import { pathToFileURL } from 'node:url';
import { compileLoaded, compileText } from '../../policy/compile.js';
import { explain } from '../../policy/explain.js';
import { loadPolicyText } from '../../policy/loader.js';
import { summarize, writeResult } from './machine.js';

/**
 * Policy benchmarks. Goals (issue 3): validate + compile a 10k-rule policy ≤ 500 ms; explain p99 ≤ 5 ms.
 * Run: `npx tsx test/bench/policy.bench.ts [rules] [runs] [lookups]`; writes test/bench/results/policy.json.
 */

const HEAD = `apiVersion: portcullis/v1
kind: Policy
deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }
egress:
  rung: transparent
  credentials:
    - { name: api, header: authorization, format: "Bearer {secret}", source: { file: ./secrets/api.token } }
  allow:
`;

/** n rules: exact names (some bump + credential, some extra ports), wildcards and IP literals. */
export function policyText(n: number): string {
  const lines: string[] = [HEAD];
  for (let i = 0; i < n; i++) {
    const team = `team-${i % 97}`;
    if (i % 10 === 0) lines.push(`    - { host: "*.svc-${i}.${team}.example.com" }\n`);
    else if (i % 10 === 1) lines.push(`    - { host: api-${i}.${team}.example.com, ports: [443, 8443], rung: bump, credential: api }\n`);
    else if (i % 50 === 2) lines.push(`    - { host: 203.0.${Math.floor(i / 250) % 256}.${i % 250}, ports: [443] }\n`);
    else lines.push(`    - host: svc-${i}.${team}.example.com\n`);
  }
  return lines.join('');
}

function destinations(n: number, rules: number): string[] {
  const team = (r: number) => `team-${r % 97}`;
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = (i * 7919) % rules;
    const w = r - (r % 10); // a wildcard rule
    const b = w + 1; // a bump rule
    const e = w + 3; // an exact rule
    switch (i % 6) {
      case 0:
        out.push(`svc-${e}.${team(e)}.example.com`);
        break;
      case 1:
        out.push(`deep.a.svc-${w}.${team(w)}.example.com:443`);
        break;
      case 2:
        out.push(`https://api-${b}.${team(b)}.example.com:8443/v1`);
        break;
      case 3:
        out.push(`unknown-${i}.example.net`);
        break;
      case 4:
        out.push(`svc-${e}.${team(e)}.example.com:9999`);
        break;
      default:
        out.push('169.254.169.254:80');
    }
  }
  return out;
}

export function benchPolicy(rules = 10_000, runs = 25, lookups = 20_000): Record<string, unknown> {
  const text = policyText(rules);
  const bytes = Buffer.byteLength(text);
  compileText(text, { file: 'bench.yaml', baseDir: '/etc/portcullis' }); // warm-up

  const total: number[] = [];
  const cpu: number[] = [];
  const parse: number[] = [];
  const comp: number[] = [];
  for (let i = 0; i < runs; i++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const loaded = loadPolicyText(text, { file: 'bench.yaml', baseDir: '/etc/portcullis' });
    const t1 = performance.now();
    compileLoaded(loaded);
    const t2 = performance.now();
    const c = process.cpuUsage(c0);
    parse.push(t1 - t0);
    comp.push(t2 - t1);
    total.push(t2 - t0);
    cpu.push((c.user + c.system) / 1000);
  }

  const heapBefore = process.memoryUsage().heapUsed;
  const ir = compileText(text, { file: 'bench.yaml', baseDir: '/etc/portcullis' });
  const heapAfter = process.memoryUsage().heapUsed;

  const dests = destinations(lookups, rules);
  const tIndex = performance.now();
  explain(ir, dests[0]!); // builds the lookup index for this IR
  const indexMs = performance.now() - tIndex;
  for (const d of dests.slice(0, 2000)) explain(ir, d); // warm-up
  const samples: number[] = [];
  const decisions: Record<string, number> = {};
  for (const d of dests) {
    const t0 = performance.now();
    const e = explain(ir, d);
    samples.push(performance.now() - t0);
    const k = e.reason ?? `allow:${e.rung}`;
    decisions[k] = (decisions[k] ?? 0) + 1;
  }

  const validateCompile = summarize(total);
  const explainMs = summarize(samples);
  return {
    rules,
    policyBytes: bytes,
    destinationsInIr: ir.egress.destinations.length,
    validateCompileMs: validateCompile,
    /** CPU time of this process per run (user + system): the cost without other processes' load */
    validateCompileCpuMs: summarize(cpu),
    parseValidateMs: summarize(parse),
    compileMs: summarize(comp),
    heapUsedBytes: { beforeCompile: heapBefore, afterCompile: heapAfter, irAndGarbage: heapAfter - heapBefore },
    explainIndexBuildMs: Math.round(indexMs * 1000) / 1000,
    explainMs,
    explainDecisions: decisions,
    goals: {
      validateCompileP99Ms: { goal: 500, measured: validateCompile.p99, met: validateCompile.p99 <= 500 },
      explainP99Ms: { goal: 5, measured: explainMs.p99, met: explainMs.p99 <= 5 },
    },
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const rules = Number(process.argv[2] ?? 10_000);
  const runs = Number(process.argv[3] ?? 25);
  const lookups = Number(process.argv[4] ?? 20_000);
  const r = benchPolicy(rules, runs, lookups);
  const file = writeResult('policy', r);
  process.stdout.write(`${JSON.stringify(r, null, 2)}\nwritten to ${file}\n`);
}
