import { X509Certificate, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { silentLogger } from '../../common/logger.js';
import { CaStore, createCaGeneration, DEFAULT_CA_VALIDITY_MS } from '../../sds-minter/ca.js';
import { issueLeaf } from '../../sds-minter/leaf.js';
import { Minter } from '../../sds-minter/minter.js';
import { parseName, type MintPolicy } from '../../sds-minter/names.js';

/**
 * Leaf minting and CA creation speed. Run directly: `npx tsx test/bench/mint.bench.ts [mints] [caRuns]`;
 * writes `test/bench/results/mint.json`.
 *
 * - `mint`: `Minter.leaf(name)` for distinct names (policy check, certificate built with node-forge,
 *   TBS signed by OpenSSL through `crypto.sign`, cache insert), after a warm-up.
 * - `issueLeaf`: the certificate alone (no policy, no cache).
 * - `caCreate`: CA key pair (Node crypto) + self-signed certificate.
 * - `rsaSignOnly`: a bare `crypto.sign` with an RSA-2048 key (the floor; shows machine noise in the tail).
 * - `caFirstStart`: `CaStore.open` on an empty directory: CA, the generation's leaf key pair, files.
 */

export interface Stats {
  n: number;
  minMs: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  meanMs: number;
}

function stats(xs: number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  // nearest-rank percentile
  const at = (q: number): number => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
  const r = (v: number): number => Math.round(v * 1000) / 1000;
  return {
    n: s.length,
    minMs: r(s[0]!),
    p50Ms: r(at(0.5)),
    p90Ms: r(at(0.9)),
    p99Ms: r(at(0.99)),
    maxMs: r(s[s.length - 1]!),
    meanMs: r(s.reduce((a, b) => a + b, 0) / s.length),
  };
}

const benchPolicy: MintPolicy = {
  isAllowed: (n) => (/^h\d+\.bench\.example$/.test(n) ? { allowed: true, san: n } : { allowed: false }),
};

export async function benchMint(mints = 1000, caRuns = 5): Promise<Record<string, unknown>> {
  if (mints < 500) throw new RangeError('use at least 500 mints');
  const tmp = mkdtempSync(join(os.tmpdir(), 'mint-bench-'));
  try {
    const caCreate: number[] = [];
    for (let i = 0; i < caRuns; i++) {
      const t0 = performance.now();
      await createCaGeneration({
        generation: 1,
        deploymentId: 'bench',
        now: Date.now(),
        validityMs: DEFAULT_CA_VALIDITY_MS,
        nameConstraints: null,
      });
      caCreate.push(performance.now() - t0);
    }
    const caFirstStart: number[] = [];
    for (let i = 0; i < caRuns; i++) {
      const t0 = performance.now();
      await CaStore.open({ dir: join(tmp, `store-${i}`, 'ca'), deploymentId: 'bench', logger: silentLogger() });
      caFirstStart.push(performance.now() - t0);
    }

    const minter = await Minter.open({ dataDir: join(tmp, 'minter'), deploymentId: 'bench', policy: benchPolicy, logger: silentLogger() });
    const warmup = 50;
    for (let i = 0; i < warmup; i++) minter.leaf(`h${1_000_000 + i}.bench.example`);
    const mintMs: number[] = [];
    const t0all = performance.now();
    let last = '';
    for (let i = 0; i < mints; i++) {
      const t0 = performance.now();
      const leaf = minter.leaf(`h${i}.bench.example`);
      mintMs.push(performance.now() - t0);
      last = leaf.certPem;
    }
    const totalMs = performance.now() - t0all;
    // sanity: the last leaf is a valid certificate issued by the CA
    const ca = new X509Certificate(minter.caCertPem());
    const leafX = new X509Certificate(last);
    if (!leafX.checkIssued(ca) || !leafX.verify(ca.publicKey)) throw new Error('benchmark leaf does not verify');
    if (minter.status().leaves !== mints + warmup) throw new Error('mints were served from the cache');

    const store = await CaStore.open({ dir: join(tmp, 'issue', 'ca'), deploymentId: 'bench', logger: silentLogger() });
    const issueMs: number[] = [];
    for (let i = 0; i < warmup + mints; i++) {
      const name = parseName(`i${i}.bench.example`)!;
      const t0 = performance.now();
      issueLeaf(store.current, name, { now: Date.now(), ttlMs: 12 * 3600_000 });
      if (i >= warmup) issueMs.push(performance.now() - t0);
    }

    // reference: one bare RSA-2048 PKCS#1 v1.5 SHA-256 signature over TBS-sized input (the floor of a mint)
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const tbsLike = randomBytes(700);
    const signMs: number[] = [];
    for (let i = 0; i < warmup + mints; i++) {
      const t0 = performance.now();
      sign('sha256', tbsLike, privateKey);
      if (i >= warmup) signMs.push(performance.now() - t0);
    }

    const cpus = os.cpus();
    return {
      date: new Date().toISOString(),
      machine: {
        cpuModel: cpus[0]?.model ?? 'unknown',
        cores: cpus.length,
        totalMemoryBytes: os.totalmem(),
        totalMemoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
        node: process.version,
        platform: `${os.platform()} ${os.release()} ${os.arch()}`,
        loadAverage1m: Math.round(os.loadavg()[0]! * 100) / 100,
      },
      keyType: 'RSA-2048 (CA and leaves; one leaf key pair per CA generation), sha256WithRSAEncryption',
      mint: { ...stats(mintMs), distinctNames: mints, warmup, mintsPerSecond: Math.round((mints / totalMs) * 1000) },
      issueLeaf: stats(issueMs),
      rsaSignOnly: stats(signMs),
      caCreate: stats(caCreate),
      caFirstStart: stats(caFirstStart),
    };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const mints = Number(process.argv[2] ?? 1000);
  const caRuns = Number(process.argv[3] ?? 5);
  const r = await benchMint(mints, caRuns);
  const out = join(dirname(fileURLToPath(import.meta.url)), 'results', 'mint.json');
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(r, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify(r, null, 2)}\nwritten to ${out}\n`);
}
