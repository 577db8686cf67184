/**
 * `npm run bench -- NAME [ARGS…]` runs test/bench/NAME.bench.ts (results in test/bench/results/);
 * without a name it lists the benchmarks. Most need root, Envoy, and for some Docker + runsc with the
 * sandbox image built (each file's header says what it needs and measures).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const benches = fs
  .readdirSync(here)
  .filter((f) => f.endsWith('.bench.ts'))
  .map((f) => f.slice(0, -'.bench.ts'.length))
  .sort();
const [name, ...rest] = process.argv.slice(2);
if (!name || name === '--help' || name === '-h') {
  process.stdout.write(`usage: npm run bench -- NAME [ARGS…]\nbenchmarks: ${benches.join(', ')}\n`);
  process.exit(name ? 0 : 2);
}
if (!benches.includes(name)) {
  process.stderr.write(`no benchmark "${name}"; there are: ${benches.join(', ')}\n`);
  process.exit(2);
}
const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(here, `${name}.bench.ts`), ...rest], { stdio: 'inherit' });
process.exit(r.status ?? 1);
