/**
 * Durations and sizes as written in policy YAML, parsed to numbers for the IR.
 *
 * Durations: one or more `<integer><unit>` terms, largest unit first, units `h`, `m`, `s`
 * (`15m`, `12h`, `1h30m`, `90s`). Bare numbers are refused (the unit would be a guess).
 * Sizes: a byte count (integer), or `<integer><unit>` with binary units `Ki` `Mi` `Gi` `Ti`
 * (powers of 1024) or decimal `K` `M` `G` `T` (powers of 1000).
 */

const DURATION = /^(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?$/;

/** Seconds, or undefined when the text is not a duration. */
export function parseDuration(text: string): number | undefined {
  if (text.length === 0 || text.length > 32) return undefined;
  const m = DURATION.exec(text);
  if (!m || (m[1] === undefined && m[2] === undefined && m[3] === undefined)) return undefined;
  const total = Number(m[1] ?? 0) * 3600 + Number(m[2] ?? 0) * 60 + Number(m[3] ?? 0);
  return Number.isSafeInteger(total) ? total : undefined;
}

/** `3600` → `1h`, `5400` → `1h30m`, `0` → `0s`. */
export function formatDuration(seconds: number): string {
  if (seconds === 0) return '0s';
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return `${h ? `${h}h` : ''}${m ? `${m}m` : ''}${s ? `${s}s` : ''}`;
}

const SIZE = /^([0-9]+)(Ki|Mi|Gi|Ti|K|M|G|T)?$/;
const FACTORS: Record<string, number> = {
  Ki: 1024,
  Mi: 1024 ** 2,
  Gi: 1024 ** 3,
  Ti: 1024 ** 4,
  K: 1000,
  M: 1000 ** 2,
  G: 1000 ** 3,
  T: 1000 ** 4,
};

/** Bytes, or undefined when the value is not a size. */
export function parseSize(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  if (value.length > 32) return undefined;
  const m = SIZE.exec(value);
  if (!m) return undefined;
  const n = Number(m[1]) * (m[2] ? FACTORS[m[2]]! : 1);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** Largest exact binary unit: `268435456` → `256Mi`, `1000` → `1000`. */
export function formatSize(bytes: number): string {
  for (const u of ['Ti', 'Gi', 'Mi', 'Ki'] as const) {
    const f = FACTORS[u]!;
    if (bytes >= f && bytes % f === 0) return `${bytes / f}${u}`;
  }
  return String(bytes);
}
