import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { expect } from 'vitest';

/**
 * Golden files: `dir/<case>.in.yaml` → `dir/<case>.out.yaml`.
 *
 * Run with `UPDATE_GOLDEN=1` to regenerate every output; outputs whose input is gone are deleted
 * in that mode (and reported as stale otherwise). Output is serialized with sorted keys so diffs are
 * stable. Secrets must already be redacted by the function under test; `assertNoSecrets` checks.
 */
export const UPDATE_GOLDEN = process.env.UPDATE_GOLDEN === '1';

export function goldenCases(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.in.yaml'))
    .map((f) => f.slice(0, -'.in.yaml'.length))
    .sort();
}

/** Outputs without an input. Deleted when regenerating; a failing list otherwise. */
export function staleGoldens(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  const inputs = new Set(goldenCases(dir));
  const stale = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.out.yaml'))
    .filter((f) => !inputs.has(f.slice(0, -'.out.yaml'.length)));
  if (UPDATE_GOLDEN) for (const f of stale) fs.rmSync(path.join(dir, f));
  return UPDATE_GOLDEN ? [] : stale;
}

export function sortKeysDeep(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeysDeep);
  if (v && typeof v === 'object' && !(v instanceof Uint8Array)) {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v as object).sort()) out[k] = sortKeysDeep((v as Record<string, unknown>)[k]);
    return out;
  }
  return v;
}

export function toGoldenYaml(v: unknown): string {
  return YAML.stringify(sortKeysDeep(v), { lineWidth: 0, aliasDuplicateObjects: false });
}

/** Compare `actual` with `dir/<name>.out.yaml`, or write it when UPDATE_GOLDEN=1. */
export function expectGolden(dir: string, name: string, actual: unknown): void {
  const file = path.join(dir, `${name}.out.yaml`);
  const text = toGoldenYaml(actual);
  if (UPDATE_GOLDEN) {
    fs.writeFileSync(file, text);
    return;
  }
  if (!fs.existsSync(file)) {
    throw new Error(`golden file missing: ${file} (run with UPDATE_GOLDEN=1 to create it, then review it)`);
  }
  expect(text).toBe(fs.readFileSync(file, 'utf8'));
}

/** Fail if any of the given secret values occurs anywhere in the serialized output. */
export function assertNoSecrets(output: unknown, secrets: readonly string[]): void {
  const text = typeof output === 'string' ? output : JSON.stringify(output);
  for (const s of secrets) {
    if (s.length >= 4 && text.includes(s)) throw new Error('golden output contains a secret value');
  }
}
