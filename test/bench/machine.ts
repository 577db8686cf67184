import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** Machine facts recorded with every benchmark result. */
export function machineInfo(): Record<string, unknown> {
  let envoy: string | null = null;
  try {
    envoy = /version: \S+?\/(\d+\.\d+\.\d+)/.exec(execFileSync(process.env.ENVOY_BIN ?? 'envoy', ['--version'], { encoding: 'utf8' }))?.[1] ?? null;
  } catch {
    envoy = null;
  }
  return {
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    memoryBytes: os.totalmem(),
    platform: `${os.platform()} ${os.release()}`,
    node: process.version,
    envoy,
    loadavg: os.loadavg(),
  };
}

export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export function summarize(samples: number[]): { n: number; p50: number; p90: number; p99: number; min: number; max: number; mean: number } {
  const s = [...samples].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / (s.length || 1);
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return { n: s.length, p50: r(percentile(s, 50)), p90: r(percentile(s, 90)), p99: r(percentile(s, 99)), min: r(s[0] ?? NaN), max: r(s.at(-1) ?? NaN), mean: r(mean) };
}

export function writeResult(name: string, result: Record<string, unknown>): string {
  const dir = path.join(path.dirname(new URL(import.meta.url).pathname), 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${name}.json`);
  fs.writeFileSync(file, `${JSON.stringify({ name, at: new Date().toISOString(), machine: machineInfo(), ...result }, null, 2)}\n`);
  return file;
}
