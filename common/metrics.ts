/**
 * A small in-process counter and gauge registry. Names are snake_case with labels rendered in
 * Prometheus form (`xds_nack_total{type="LDS"}`). Read by the operator API, tests and benchmarks.
 */
export type Labels = Record<string, string>;

function key(name: string, labels?: Labels): string {
  if (!labels || Object.keys(labels).length === 0) return name;
  const parts = Object.keys(labels)
    .sort()
    .map((k) => `${k}="${labels[k]}"`);
  return `${name}{${parts.join(',')}}`;
}

export class Metrics {
  private readonly values = new Map<string, number>();

  inc(name: string, labels?: Labels, by = 1): void {
    const k = key(name, labels);
    this.values.set(k, (this.values.get(k) ?? 0) + by);
  }

  set(name: string, value: number, labels?: Labels): void {
    this.values.set(key(name, labels), value);
  }

  get(name: string, labels?: Labels): number {
    return this.values.get(key(name, labels)) ?? 0;
  }

  /** Sum over every label combination of a metric name. */
  total(name: string): number {
    let t = 0;
    for (const [k, v] of this.values) if (k === name || k.startsWith(`${name}{`)) t += v;
    return t;
  }

  snapshot(): Record<string, number> {
    return Object.fromEntries([...this.values.entries()].sort(([a], [b]) => (a < b ? -1 : 1)));
  }

  /** Prometheus text exposition. */
  render(): string {
    return [...this.values.entries()].map(([k, v]) => `${k} ${v}`).join('\n') + '\n';
  }
}
