import { createHash } from 'node:crypto';
import { XDS_TYPE_URLS, type XdsTypeUrl } from '../envoy/api/type-urls.js';
import type { Resource, Snapshot } from './snapshot.js';

/**
 * Test helpers for the stream state machines: snapshots made of opaque resources (the streams
 * never look inside a resource), so property tests can generate thousands of them cheaply.
 */
export function fakeResource(typeUrl: XdsTypeUrl, name: string, content: string): Resource {
  const encoded = Buffer.from(`${name}\0${content}`);
  return { typeUrl, name, body: { name, content }, encoded, hash: createHash('sha256').update(encoded).digest('hex').slice(0, 16) };
}

export function fakeSnapshot(version: string, spec: Partial<Record<XdsTypeUrl, Record<string, string>>>): Snapshot {
  const resources = new Map<XdsTypeUrl, Map<string, Resource>>();
  for (const t of XDS_TYPE_URLS) {
    const m = new Map<string, Resource>();
    for (const [n, c] of Object.entries(spec[t] ?? {}).sort(([a], [b]) => (a < b ? -1 : 1))) m.set(n, fakeResource(t, n, c));
    resources.set(t, m);
  }
  return { version, resources };
}

/** Decode a fake resource's content back from its encoding. */
export function fakeContent(encoded: Uint8Array): { name: string; content: string } {
  const s = Buffer.from(encoded).toString();
  const i = s.indexOf('\0');
  return { name: s.slice(0, i), content: s.slice(i + 1) };
}
