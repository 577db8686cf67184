import { isIP } from 'node:net';

/**
 * Names the minter issues leaves for, and the policy hook that decides which ones it may issue.
 *
 * A leaf name is one of:
 * - a DNS host name (`api.example.com`), lower-cased, without a trailing dot;
 * - a wildcard (`*.example.com`): one left-most `*` label over at least two labels; as a certificate
 *   it matches exactly one label (`a.example.com`, not `a.b.example.com`), per RFC 6125;
 * - an IP literal (`198.51.100.7`, `2001:db8::1`), canonical form.
 */
export type LeafNameKind = 'dns' | 'wildcard' | 'ip';

export interface ParsedName {
  kind: LeafNameKind;
  /** canonical form */
  name: string;
}

const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

/** Canonical form of a requested name, or null when it is not a valid host name, wildcard or IP. */
export function parseName(raw: string): ParsedName | null {
  if (typeof raw !== 'string' || raw.length === 0 || raw.length > 254) return null;
  const ipFamily = isIP(raw);
  if (ipFamily !== 0) {
    const canonical = canonicalIp(raw, ipFamily);
    return canonical === null ? null : { kind: 'ip', name: canonical };
  }
  let name = raw.toLowerCase();
  if (name.endsWith('.')) name = name.slice(0, -1);
  if (name.length === 0 || name.length > 253) return null;
  const labels = name.split('.');
  if (labels[0] === '*') {
    const rest = labels.slice(1);
    if (rest.length < 2 || !rest.every((l) => LABEL.test(l))) return null;
    return { kind: 'wildcard', name };
  }
  if (!labels.every((l) => LABEL.test(l))) return null;
  // all-numeric dotted names that are not valid IPv4 (e.g. "1.2.3") are ambiguous: refuse them
  if (labels.every((l) => /^[0-9]+$/.test(l))) return null;
  return { kind: 'dns', name };
}

function canonicalIp(raw: string, family: number): string | null {
  try {
    const host = new URL(family === 6 ? `http://[${raw}]/` : `http://${raw}/`).hostname;
    const out = family === 6 ? host.slice(1, -1) : host;
    return isIP(out) === family ? out : null;
  } catch {
    return null;
  }
}

/** True when a certificate issued for `san` is valid for a TLS connection to `host` (RFC 6125). */
export function sanCovers(san: string, host: string): boolean {
  if (san === host) return true;
  if (!san.startsWith('*.')) return false;
  const dot = host.indexOf('.');
  if (dot <= 0) return false;
  return host.slice(0, dot) !== '*' && host.slice(dot + 1) === san.slice(2);
}

/**
 * The policy's answer for one name. `san` is the leaf to issue: the name itself for an exact rule,
 * or a wildcard that covers the name for a wildcard rule.
 */
export interface MintDecision {
  allowed: boolean;
  san?: string;
  /** free text for logs when refused (never shown to a remote caller) */
  reason?: string;
}

/**
 * What the minter consults before every mint. It is the only way to obtain a leaf: the minter
 * never issues a certificate for a name this predicate does not allow, and it checks that the
 * returned `san` really covers the requested name.
 */
export interface MintPolicy {
  isAllowed(name: string): MintDecision;
  /**
   * Exact hosts and wildcard patterns allowed at a bump rung. Used to mint ahead of time and to
   * derive the CA's name constraints when those are enabled.
   */
  bumpHosts?(): readonly string[];
}

/**
 * A policy from a list of bump-rung hosts as written in the policy file: exact names, IP literals
 * and `*.example.com` patterns, where the pattern matches one or more labels below the suffix.
 *
 * For a name under a wildcard rule the leaf is the wildcard of the name's parent domain:
 * `a.example.com` → `*.example.com`, `a.b.example.com` → `*.b.example.com`, so the certificate
 * matches the name under RFC 6125 and is still inside the rule. The pattern itself
 * (`*.example.com`) is also allowed, which is how SDS asks for wildcard leaves by secret name.
 */
export function allowListPolicy(hosts: readonly string[]): MintPolicy {
  const exact = new Set<string>();
  const suffixes = new Set<string>();
  const listed: string[] = [];
  for (const h of hosts) {
    const p = parseName(h);
    if (p === null) throw new TypeError(`allow-list entry is not a host name, wildcard or IP literal: ${JSON.stringify(h)}`);
    if (p.kind === 'wildcard') suffixes.add(p.name.slice(2));
    else exact.add(p.name);
    if (!listed.includes(p.name)) listed.push(p.name);
  }
  return {
    isAllowed(raw: string): MintDecision {
      const p = parseName(raw);
      if (p === null) return { allowed: false, reason: 'invalid name' };
      if (p.kind === 'wildcard') {
        const base = p.name.slice(2);
        // `*.b.example.com` is inside the rule `*.example.com`; `*.example.com` is the rule itself
        for (const s of suffixes) {
          if (base === s || base.endsWith(`.${s}`)) return { allowed: true, san: p.name };
        }
        return { allowed: false, reason: 'no matching rule' };
      }
      if (exact.has(p.name)) return { allowed: true, san: p.name };
      if (p.kind === 'dns') {
        for (const s of suffixes) {
          if (p.name.endsWith(`.${s}`)) {
            return { allowed: true, san: `*.${p.name.slice(p.name.indexOf('.') + 1)}` };
          }
        }
      }
      return { allowed: false, reason: 'no matching rule' };
    },
    bumpHosts: () => [...listed],
  };
}

/** Printable, bounded form of an untrusted name for logs, errors and events. */
export function displayName(raw: unknown): string {
  const s = typeof raw === 'string' ? raw : String(raw);
  const clean = s.replace(/[^\x21-\x7e]/g, '?');
  return clean.length > 255 ? `${clean.slice(0, 255)}…` : clean;
}
