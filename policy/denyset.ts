import { formatCidr, mappedCidr, nat64Cidr, parseCidr, parseIp, cidrContains, type Cidr } from './ip.js';

/**
 * The mandatory resolved-IP deny-set (ARCHITECTURE.md invariant 4, NFR-SEC-12). Envoy enforces it at
 * connect time on the resolved address, whatever the allow-list says. It is not in the policy's
 * power: the compiler always copies it into the IR, `validateIr` refuses an IR without every entry,
 * and an allow rule or storage backend naming an address inside it is a policy error.
 */

export interface DenyCidr {
  /** canonical CIDR text, e.g. `10.0.0.0/8`, `::ffff:10.0.0.0/104`, `64:ff9b::a00:0/104` */
  cidr: string;
  /** why it is denied */
  reason: string;
}

const V4: ReadonlyArray<[string, string]> = [
  ['0.0.0.0/8', 'this network (0.0.0.0/8)'],
  ['10.0.0.0/8', 'private (RFC 1918)'],
  ['100.64.0.0/10', 'shared address space / CGNAT (RFC 6598)'],
  ['127.0.0.0/8', 'loopback'],
  ['169.254.0.0/16', 'link-local, cloud metadata (169.254.169.254)'],
  ['172.16.0.0/12', 'private (RFC 1918)'],
  ['192.168.0.0/16', 'private (RFC 1918)'],
  ['198.18.0.0/15', 'sandbox networks (Docker address pool)'],
  ['224.0.0.0/4', 'multicast'],
  ['240.0.0.0/4', 'reserved and limited broadcast'],
];

const V6: ReadonlyArray<[string, string]> = [
  ['::/128', 'unspecified'],
  ['::1/128', 'loopback'],
  ['fc00::/7', 'unique local (RFC 4193)'],
  ['fd00:ec2::254/128', 'cloud metadata (IPv6)'],
  ['fe80::/10', 'link-local (RFC 4291)'],
  ['ff00::/8', 'multicast'],
];

function build(): { entries: DenyCidr[]; parsed: Cidr[] } {
  const entries: DenyCidr[] = [];
  const parsed: Cidr[] = [];
  const add = (c: Cidr, reason: string) => {
    entries.push({ cidr: formatCidr(c), reason });
    parsed.push(c);
  };
  for (const [text, reason] of V4) {
    const c = parseCidr(text);
    if (!c) throw new Error(`bad built-in CIDR ${text}`);
    add(c, reason);
  }
  for (const [text, reason] of V6) {
    const c = parseCidr(text);
    if (!c) throw new Error(`bad built-in CIDR ${text}`);
    add(c, reason);
  }
  for (const [text, reason] of V4) {
    const c = parseCidr(text)!;
    add(mappedCidr(c), `IPv4-mapped: ${reason}`);
  }
  for (const [text, reason] of V4) {
    const c = parseCidr(text)!;
    add(nat64Cidr(c), `NAT64 (64:ff9b::/96): ${reason}`);
  }
  return { entries, parsed };
}

const BUILT = build();

/** Every entry, IPv4 first, then IPv6, then IPv4-mapped and NAT64 forms of the IPv4 entries. */
export const DENY_SET: readonly DenyCidr[] = Object.freeze(BUILT.entries.map((e) => Object.freeze(e)));

/** The CIDR strings alone, in the order of DENY_SET (what the IR carries). */
export const DENY_SET_CIDRS: readonly string[] = Object.freeze(DENY_SET.map((e) => e.cidr));

/** The entry that denies `ip`, or undefined. Throws on text that is not an IP literal. */
export function deniedBy(ip: string): DenyCidr | undefined {
  const p = parseIp(ip);
  if (!p) throw new TypeError(`not an IP literal: ${JSON.stringify(ip)}`);
  for (let i = 0; i < BUILT.parsed.length; i++) {
    if (cidrContains(BUILT.parsed[i]!, p)) return DENY_SET[i];
  }
  return undefined;
}

/** True when `ip` (IPv4, IPv6, or bracketed IPv6) falls inside the mandatory deny-set. */
export function isDenied(ip: string): boolean {
  return deniedBy(ip) !== undefined;
}
