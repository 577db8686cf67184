/**
 * IP literal parsing, canonical formatting and CIDR arithmetic. Strict on purpose: only the forms a
 * person would write as an address are accepted (dotted-quad IPv4 without leading zeros, RFC 4291
 * IPv6 text without a zone id). Everything else is not an IP literal.
 */

export interface ParsedIp {
  family: 4 | 6;
  /** 32-bit (IPv4) or 128-bit (IPv6) value */
  value: bigint;
}

export interface Cidr {
  family: 4 | 6;
  base: bigint;
  prefix: number;
}

const V4_OCTET = /^(0|[1-9][0-9]{0,2})$/;
const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;

export function parseIpv4(s: string): bigint | undefined {
  const parts = s.split('.');
  if (parts.length !== 4) return undefined;
  let v = 0n;
  for (const p of parts) {
    if (!V4_OCTET.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    v = (v << 8n) | BigInt(n);
  }
  return v;
}

export function parseIpv6(input: string): bigint | undefined {
  let s = input;
  if (s.length === 0 || s.length > 45 || s.includes('%')) return undefined;
  // An embedded dotted-quad may only end the address: rewrite it as two hex groups.
  const lastColon = s.lastIndexOf(':');
  if (lastColon >= 0 && s.slice(lastColon + 1).includes('.')) {
    const v4 = parseIpv4(s.slice(lastColon + 1));
    if (v4 === undefined) return undefined;
    s = `${s.slice(0, lastColon + 1)}${((v4 >> 16n) & 0xffffn).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const dbl = s.indexOf('::');
  if (dbl !== s.lastIndexOf('::')) return undefined;
  const parseGroups = (part: string): bigint[] | undefined => {
    if (part === '') return [];
    const out: bigint[] = [];
    for (const g of part.split(':')) {
      if (!HEX_GROUP.test(g)) return undefined;
      out.push(BigInt(parseInt(g, 16)));
    }
    return out;
  };
  let groups: bigint[];
  const want = 8;
  if (dbl >= 0) {
    const head = parseGroups(s.slice(0, dbl));
    const rest = parseGroups(s.slice(dbl + 2));
    if (!head || !rest) return undefined;
    const fill = want - head.length - rest.length;
    if (fill < 1) return undefined;
    groups = [...head, ...new Array<bigint>(fill).fill(0n), ...rest];
  } else {
    const all = parseGroups(s);
    if (!all || all.length !== want) return undefined;
    groups = all;
  }
  if (groups.length !== 8) return undefined;
  let v = 0n;
  for (const g of groups) v = (v << 16n) | g;
  return v;
}

/** Parse an IPv4 or IPv6 literal (IPv6 optionally in brackets). */
export function parseIp(s: string): ParsedIp | undefined {
  if (s.startsWith('[') && s.endsWith(']')) {
    const v6 = parseIpv6(s.slice(1, -1));
    return v6 === undefined ? undefined : { family: 6, value: v6 };
  }
  const v4 = parseIpv4(s);
  if (v4 !== undefined) return { family: 4, value: v4 };
  if (!s.includes(':')) return undefined;
  const v6 = parseIpv6(s);
  return v6 === undefined ? undefined : { family: 6, value: v6 };
}

export function formatIpv4(v: bigint): string {
  return [24n, 16n, 8n, 0n].map((sh) => String((v >> sh) & 0xffn)).join('.');
}

const MAPPED_PREFIX = 0xffffn << 32n;

/** RFC 5952 text: lowercase, no leading zeros, longest zero run compressed; IPv4-mapped as `::ffff:a.b.c.d`. */
export function formatIpv6(v: bigint): string {
  if (v >> 32n === 0xffffn) return `::ffff:${formatIpv4(v & 0xffffffffn)}`;
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((v >> BigInt(i * 16)) & 0xffffn));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestLen < 2) return hex.join(':');
  const head = hex.slice(0, bestStart).join(':');
  const tail = hex.slice(bestStart + bestLen).join(':');
  return `${head}::${tail}`;
}

export function formatIp(ip: ParsedIp): string {
  return ip.family === 4 ? formatIpv4(ip.value) : formatIpv6(ip.value);
}

/** `a.b.c.d/n` or `v6/n`; the base must have no bits set beyond the prefix. */
export function parseCidr(s: string): Cidr | undefined {
  const slash = s.lastIndexOf('/');
  if (slash < 0) return undefined;
  const ip = parseIp(s.slice(0, slash));
  const lenText = s.slice(slash + 1);
  if (!ip || !/^(0|[1-9][0-9]{0,2})$/.test(lenText)) return undefined;
  const prefix = Number(lenText);
  const bits = ip.family === 4 ? 32 : 128;
  if (prefix > bits) return undefined;
  const hostMask = (1n << BigInt(bits - prefix)) - 1n;
  if ((ip.value & hostMask) !== 0n) return undefined;
  return { family: ip.family, base: ip.value, prefix };
}

export function formatCidr(c: Cidr): string {
  return `${formatIp({ family: c.family, value: c.base })}/${c.prefix}`;
}

export function cidrContains(c: Cidr, ip: ParsedIp): boolean {
  if (c.family !== ip.family) return false;
  const bits = c.family === 4 ? 32 : 128;
  const shift = BigInt(bits - c.prefix);
  return ip.value >> shift === c.base >> shift;
}

/** The IPv4-mapped IPv6 form (`::ffff:0:0/96` + n) of an IPv4 CIDR. */
export function mappedCidr(c: Cidr): Cidr {
  if (c.family !== 4) throw new Error('mappedCidr: IPv4 CIDR expected');
  return { family: 6, base: MAPPED_PREFIX | c.base, prefix: 96 + c.prefix };
}

const NAT64_PREFIX = 0x0064ff9bn << 96n;

/** The NAT64 well-known-prefix form (`64:ff9b::/96` + n, RFC 6052) of an IPv4 CIDR. */
export function nat64Cidr(c: Cidr): Cidr {
  if (c.family !== 4) throw new Error('nat64Cidr: IPv4 CIDR expected');
  return { family: 6, base: NAT64_PREFIX | c.base, prefix: 96 + c.prefix };
}
