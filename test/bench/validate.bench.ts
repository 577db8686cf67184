import { pathToFileURL } from 'node:url';
import { largeRouteConfiguration } from '../../envoy/api/resource.fixtures.js';
import { decodeResource, encodeResource, validateResource } from '../../envoy/api/resource.js';
import { XDS } from '../../envoy/api/type-urls.js';

/**
 * Pre-push validator speed on a large RouteConfiguration (n routes, 100 per virtual host, each
 * with a header matcher, a route action with a Duration and a header to add). Run directly:
 * `node --import tsx test/bench/validate.bench.ts [routes] [iterations]`.
 */

export interface Stats {
  min: number;
  median: number;
  p90: number;
}

function stats(xs: number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  return { min: s[0]!, median: at(0.5), p90: at(0.9) };
}

function time(iterations: number, f: () => void): Stats {
  f(); // warm-up: compiles the per-type plans and lets the JIT settle
  const xs: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const t0 = performance.now();
    f();
    xs.push(performance.now() - t0);
  }
  return stats(xs);
}

export function benchValidate(routes = 10_000, iterations = 15): Record<string, Stats | number> {
  const rc = largeRouteConfiguration(routes);
  const issues = validateResource(XDS.route, 'big', rc);
  if (issues.length > 0) throw new Error(`benchmark input is invalid: ${issues[0]!.message}`);
  const bytes = encodeResource(XDS.route, 'big', rc);
  return {
    routes,
    encodedBytes: bytes.length,
    validateMs: time(iterations, () => validateResource(XDS.route, 'big', rc)),
    encodeMs: time(iterations, () => encodeResource(XDS.route, 'big', rc)),
    decodeMs: time(iterations, () => decodeResource(XDS.route, bytes)),
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const routes = Number(process.argv[2] ?? 10_000);
  const iterations = Number(process.argv[3] ?? 15);
  const r = benchValidate(routes, iterations);
  const fmt = (v: Stats | number): string =>
    typeof v === 'number' ? String(v) : `min ${v.min.toFixed(1)} ms, median ${v.median.toFixed(1)} ms, p90 ${v.p90.toFixed(1)} ms`;
  for (const [k, v] of Object.entries(r)) process.stdout.write(`${k.padEnd(12)} ${fmt(v)}\n`);
}
