import { domainToASCII } from 'node:url';
import { formatIp, parseIp } from './ip.js';

/**
 * Host matching semantics, defined once (see policy/README.md, "Matching").
 *
 * - Names are compared case-insensitively, with one trailing dot removed, and IDNs in punycode
 *   (A-labels): `BÜCHER.de.` and `xn--bcher-kva.de` are the same name.
 * - `*.example.com` matches every name with one or more labels below `example.com`; it matches
 *   neither `example.com` itself nor `badexample.com`.
 * - Refused patterns: `*`, partial wildcards (`foo*.com`, `*foo.com`, `a.*.com`), and wildcards over a
 *   public-suffix-like name (see `isPublicSuffixLike`).
 * - An IP literal is an IP only when written as one: a dotted quad, or IPv6 text (optionally in
 *   brackets). Numeric-looking names that resolvers would read as addresses (`127.1`, `0x7f.1`,
 *   `2130706433`, `010.0.0.1`) are refused; IP patterns only match IP destinations and names only
 *   match names.
 */

export type HostKind = 'exact' | 'wildcard' | 'ip';

export interface HostPattern {
  kind: HostKind;
  /** normalized: lowercase A-label name, `*.suffix`, or canonical IP text (IPv6 without brackets) */
  host: string;
  /** for wildcards: the normalized suffix after `*.` */
  suffix?: string;
}

export interface HostProblem {
  ok: false;
  /** stable issue code: `host_empty`, `host_invalid`, `host_numeric`, `wildcard_all`, `wildcard_partial`, `wildcard_public_suffix`, `host_loopback_name` */
  code: string;
  message: string;
  hint?: string;
}

export type HostResult = { ok: true; pattern: HostPattern } | HostProblem;

export type NameResult =
  | { ok: true; kind: 'name' | 'ip'; host: string }
  | HostProblem;

const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const ASCII_ONLY = /^[\x21-\x7e]*$/;

/**
 * Second-level labels that registries under a two-letter country code use as public suffixes
 * (`co.uk`, `com.au`, `ne.jp`, `gob.mx`, …). `*.<one of these>.<cc>` is refused.
 */
const CC_SECOND_LEVEL = new Set([
  'ac', 'biz', 'co', 'com', 'edu', 'go', 'gob', 'gov', 'govt', 'info', 'ltd', 'me', 'mil', 'ne', 'net',
  'nhs', 'nic', 'nom', 'or', 'org', 'plc', 'sch',
]);

/**
 * Multi-label public suffixes and shared-hosting domains where anyone can obtain a name (a subset
 * of the Public Suffix List chosen for the egress use case: a wildcard over one of these reaches
 * names controlled by strangers, a classic exfiltration path).
 */
const PUBLIC_SUFFIX_LIKE_LIST = [
  'appspot.com', 'azurewebsites.net', 'blob.core.windows.net', 'blogspot.com', 'cloudfront.net',
  'codeberg.page', 'fly.dev', 'firebaseapp.com', 'github.io', 'githubusercontent.com', 'gitlab.io',
  'glitch.me', 'herokuapp.com', 'ngrok-free.app', 'ngrok.io', 'netlify.app', 'onrender.com',
  'pages.dev', 'r2.dev', 'railway.app', 'repl.co', 's3.amazonaws.com', 'trycloudflare.com',
  'vercel.app', 'web.app', 'workers.dev',
] as const;
const PUBLIC_SUFFIX_LIKE_SET = new Set<string>(PUBLIC_SUFFIX_LIKE_LIST);

/** The built-in list (exported for documentation and tests). */
export const PUBLIC_SUFFIX_LIKE: readonly string[] = PUBLIC_SUFFIX_LIKE_LIST;

/**
 * A normalized suffix is public-suffix-like when wildcarding it would cover names owned by
 * unrelated parties:
 * 1. it has a single label (`com`, `internal`, `dev`);
 * 2. it is `<second-level>.<cc>` with a two-letter last label and a registry second level from
 *    CC_SECOND_LEVEL (`co.uk`, `com.au`, `or.jp`);
 * 3. it is in PUBLIC_SUFFIX_LIKE, or is `s3.<region>.amazonaws.com`.
 */
export function isPublicSuffixLike(suffix: string): boolean {
  const labels = suffix.split('.');
  if (labels.length <= 1) return true;
  if (labels.length === 2 && labels[1]!.length === 2 && CC_SECOND_LEVEL.has(labels[0]!)) return true;
  if (PUBLIC_SUFFIX_LIKE_SET.has(suffix)) return true;
  if (labels.length === 4 && labels[0] === 's3' && labels[2] === 'amazonaws' && labels[3] === 'com') return true;
  return false;
}

function problem(code: string, message: string, hint?: string): HostProblem {
  return hint === undefined ? { ok: false, code, message } : { ok: false, code, message, hint };
}

/** True when a resolver would read the name as a numeric address (WHATWG "ends in a number"). */
function endsInNumber(name: string): boolean {
  const labels = name.split('.');
  const last = labels[labels.length - 1] ?? '';
  return /^[0-9]+$/.test(last) || /^0x[0-9a-f]*$/i.test(last);
}

/**
 * Normalize a DNS name: lowercase, strip one trailing dot, IDN to punycode, and check LDH syntax.
 * Does not accept IP literals or wildcards (see `normalizeDestinationHost`, `parseHostPattern`).
 */
export function normalizeName(input: string): { ok: true; name: string } | HostProblem {
  if (input.length === 0) return problem('host_empty', 'host is empty');
  if (/\s/.test(input)) return problem('host_invalid', `host '${input}' contains whitespace`);
  let s = input.endsWith('.') ? input.slice(0, -1) : input;
  if (s.length === 0 || s.startsWith('.') || s.includes('..')) {
    return problem('host_invalid', `host '${input}' has an empty label`);
  }
  if (!ASCII_ONLY.test(s)) {
    const ascii = domainToASCII(s);
    if (ascii === '') return problem('host_invalid', `host '${input}' is not a valid internationalized domain name`);
    s = ascii;
  }
  s = s.toLowerCase();
  if (s.endsWith('.')) s = s.slice(0, -1);
  if (endsInNumber(s)) {
    return problem(
      'host_numeric',
      `host '${input}' looks like a numeric address but is not a dotted-quad or IPv6 literal`,
      'write IPv4 addresses as four decimal octets without leading zeros (e.g. 203.0.113.7)',
    );
  }
  if (s.length > 253) return problem('host_invalid', `host '${input}' is longer than 253 characters`);
  if (s.includes('xn--') && domainToASCII(s) !== s) {
    return problem('host_invalid', `host '${input}' contains an invalid punycode (xn--) label`);
  }
  for (const label of s.split('.')) {
    if (!LABEL.test(label)) {
      const why = label.length > 63
        ? 'a label is longer than 63 characters'
        : label.includes('_')
          ? 'underscores are not allowed in host names'
          : 'labels may contain only letters, digits and inner hyphens';
      return problem('host_invalid', `host '${input}' is not a valid DNS name: ${why}`);
    }
  }
  return { ok: true, name: s };
}

function isLoopbackName(name: string): boolean {
  return name === 'localhost' || name.endsWith('.localhost');
}

const patternCache = new Map<string, HostResult>();
const PATTERN_CACHE_MAX = 100_000;

/**
 * Parse and normalize an allow-list host pattern: an exact name, `*.suffix`, or an IP literal.
 * Deny-set membership of IP literals is checked by the schema (it needs denyset.ts). Results are
 * frozen and memoized (validation, cross-field checks, compile and validateIr all ask).
 */
export function parseHostPattern(input: string): HostResult {
  const hit = patternCache.get(input);
  if (hit) return hit;
  const r = parseHostPatternUncached(input);
  if (r.ok) Object.freeze(r.pattern);
  Object.freeze(r);
  if (patternCache.size >= PATTERN_CACHE_MAX) patternCache.clear();
  patternCache.set(input, r);
  return r;
}

function parseHostPatternUncached(input: string): HostResult {
  if (input.length === 0) return problem('host_empty', 'host is empty', 'write a DNS name such as api.example.com');
  const ip = parseIp(input);
  if (ip) return { ok: true, pattern: { kind: 'ip', host: formatIp(ip) } };
  if (input.startsWith('[')) return problem('host_invalid', `host '${input}' is not a valid IPv6 literal`);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(input)) {
    return problem('host_invalid', `host '${input}' is a URL`, 'write only the host name, without scheme, port or path');
  }
  if (input.includes(':')) {
    return problem(
      'host_invalid',
      `host '${input}' contains ':'`,
      /:[0-9]+$/.test(input) ? 'put the port in `ports`, not in `host`' : 'IPv6 literals must be valid RFC 4291 text',
    );
  }
  if (input === '*' || input === '*.' || input === '**') {
    return problem('wildcard_all', `host '${input}' would match every destination`, 'list the destinations you need, e.g. "*.example.com"');
  }
  if (input.includes('*')) {
    const rest = input.slice(2);
    if (!input.startsWith('*.') || rest.includes('*')) {
      return problem(
        'wildcard_partial',
        `host '${input}': partial wildcards are not supported`,
        "a wildcard must be a whole leftmost label: '*.example.com'",
      );
    }
    const n = normalizeName(rest);
    if (!n.ok) return n.code === 'host_empty' ? problem('host_invalid', `host '${input}' has an empty suffix`) : n;
    if (isLoopbackName(n.name) || n.name === 'localhost') {
      return problem('host_loopback_name', `host '${input}' names loopback; the deny-set refuses it at connect time`);
    }
    if (isPublicSuffixLike(n.name)) {
      return problem(
        'wildcard_public_suffix',
        `wildcard '${input}' covers a public suffix`,
        `name the registered domain, e.g. '*.example.${n.name}'`,
      );
    }
    return { ok: true, pattern: { kind: 'wildcard', host: `*.${n.name}`, suffix: n.name } };
  }
  const n = normalizeName(input);
  if (!n.ok) return n;
  if (isLoopbackName(n.name)) {
    return problem('host_loopback_name', `host '${input}' names loopback; the deny-set refuses it at connect time`);
  }
  return { ok: true, pattern: { kind: 'exact', host: n.name } };
}

/** Normalize a destination host (a name or an IP literal, never a pattern). */
export function normalizeDestinationHost(input: string): NameResult {
  const ip = parseIp(input);
  if (ip) return { ok: true, kind: 'ip', host: formatIp(ip) };
  if (input.includes('*')) return problem('host_invalid', `destination '${input}' contains a wildcard`);
  if (input.includes(':') || input.startsWith('[')) return problem('host_invalid', `destination '${input}' is not a valid host`);
  const n = normalizeName(input);
  if (!n.ok) return n;
  return { ok: true, kind: 'name', host: n.name };
}

/**
 * Does `pattern` match destination `name`? Both sides are normalized first; an invalid pattern or
 * name never matches. IP patterns match only the same address; names never match IP patterns.
 */
export function matchHost(pattern: HostPattern | string, name: string): boolean {
  const p = typeof pattern === 'string' ? parseHostPattern(pattern) : { ok: true as const, pattern };
  if (!p.ok) return false;
  const d = normalizeDestinationHost(name);
  if (!d.ok) return false;
  return matchNormalized(p.pattern, d.kind, d.host);
}

/** Match with both sides already normalized (the hot path used by explain). */
export function matchNormalized(p: Pick<HostPattern, 'kind' | 'host'>, kind: 'name' | 'ip', host: string): boolean {
  switch (p.kind) {
    case 'ip':
      return kind === 'ip' && host === p.host;
    case 'exact':
      return kind === 'name' && host === p.host;
    case 'wildcard': {
      if (kind !== 'name') return false;
      const suffix = p.host.slice(1); // ".example.com"
      return host.length > suffix.length && host.endsWith(suffix);
    }
  }
}

/**
 * Specificity for precedence: IP and exact patterns beat every wildcard; among wildcards the one
 * with more labels in its suffix wins. Equal values on overlapping ports are duplicate rules.
 */
export function specificity(p: Pick<HostPattern, 'kind' | 'host'>): number {
  if (p.kind !== 'wildcard') return 1000;
  return p.host.split('.').length - 1;
}

export interface ParsedDestination {
  host: string;
  kind: 'name' | 'ip';
  port: number;
}

export type DestinationResult = { ok: true; dest: ParsedDestination } | HostProblem;

const SCHEME_PORTS: Record<string, number> = { https: 443, http: 80, wss: 443, ws: 80 };

/**
 * Parse an explain/test destination: `host`, `host:port`, `[v6]`, `[v6]:port`, a bare IPv6
 * literal, or a URL (`https://host[:port]/…`; the scheme's default port applies; userinfo refused).
 * Without a port the default is 443.
 */
export function parseDestination(input: string): DestinationResult {
  let s = input.trim();
  if (s.length === 0) return problem('host_empty', 'destination is empty');
  let defaultPort = 443;
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//.exec(s);
  if (scheme) {
    const sch = scheme[1]!.toLowerCase();
    const p = SCHEME_PORTS[sch];
    if (p === undefined) return problem('host_invalid', `unsupported URL scheme '${sch}'`, 'use https://, http://, wss:// or ws://');
    defaultPort = p;
    s = s.slice(scheme[0].length);
    const end = s.search(/[/?#]/);
    if (end >= 0) s = s.slice(0, end);
    if (s.includes('@')) return problem('host_invalid', 'URLs with user information are not accepted', 'remove the user:password@ part');
  }
  let host: string;
  let portText: string | undefined;
  if (s.startsWith('[')) {
    const close = s.indexOf(']');
    if (close < 0) return problem('host_invalid', `destination '${input}' has an unclosed '['`);
    host = s.slice(0, close + 1);
    const rest = s.slice(close + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) return problem('host_invalid', `destination '${input}' is not host[:port]`);
      portText = rest.slice(1);
    }
  } else if (parseIp(s)?.family === 6) {
    host = s;
  } else {
    const colon = s.lastIndexOf(':');
    if (colon >= 0) {
      host = s.slice(0, colon);
      portText = s.slice(colon + 1);
    } else {
      host = s;
    }
  }
  let port = defaultPort;
  if (portText !== undefined) {
    if (!/^[0-9]{1,5}$/.test(portText)) return problem('port_invalid', `port '${portText}' is not a number`);
    port = Number(portText);
    if (port < 1 || port > 65535) return problem('port_invalid', `port ${port} is outside 1-65535`);
  }
  const h = normalizeDestinationHost(host);
  if (!h.ok) return h;
  return { ok: true, dest: { host: h.host, kind: h.kind, port } };
}

/** Format `host:port` with brackets around IPv6. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
