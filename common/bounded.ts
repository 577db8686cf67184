/**
 * Set `key` in a map that keeps at most `max` entries: after the set, the oldest entries (by
 * insertion order; setting an existing key keeps its place) are dropped until `max` remain. For
 * the bounded memories of ids and verdicts that must not grow with traffic.
 */
export function setBounded<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  map.set(key, value);
  while (map.size > max) map.delete(map.keys().next().value as K);
}
