import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  formatHostPort,
  isPublicSuffixLike,
  matchHost,
  normalizeName,
  parseDestination,
  parseHostPattern,
  PUBLIC_SUFFIX_LIKE,
  specificity,
} from './hosts.js';
import { formatIp, parseIp } from './ip.js';

const label = fc.stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?$/).filter((l) => !/^[0-9]+$/.test(l) && !/^0x/.test(l));
const name = fc.array(label, { minLength: 2, maxLength: 5 }).map((ls) => ls.join('.')).filter((n) => !isPublicSuffixLike(n) && n.length <= 253);

describe('parseHostPattern', () => {
  it.each([
    ['api.example.com', 'exact', 'api.example.com'],
    ['API.Example.COM.', 'exact', 'api.example.com'],
    ['bücher.de', 'exact', 'xn--bcher-kva.de'],
    ['BÜCHER.DE.', 'exact', 'xn--bcher-kva.de'],
    ['example。com', 'exact', 'example.com'],
    ['*.example.com', 'wildcard', '*.example.com'],
    ['*.München.DE', 'wildcard', '*.xn--mnchen-3ya.de'],
    ['*.bbc.co.uk', 'wildcard', '*.bbc.co.uk'],
    ['203.0.113.7', 'ip', '203.0.113.7'],
    ['[2001:DB8::1]', 'ip', '2001:db8::1'],
    ['2001:db8:0:0:0:0:0:1', 'ip', '2001:db8::1'],
  ])('%s → %s %s', (input, kind, host) => {
    const r = parseHostPattern(input);
    expect(r.ok && r.pattern).toMatchObject({ kind, host });
  });

  it.each([
    ['', 'host_empty'],
    ['*', 'wildcard_all'],
    ['*.com', 'wildcard_public_suffix'],
    ['*.internal', 'wildcard_public_suffix'],
    ['*.co.uk', 'wildcard_public_suffix'],
    ['*.com.au', 'wildcard_public_suffix'],
    ['*.github.io', 'wildcard_public_suffix'],
    ['*.s3.eu-west-1.amazonaws.com', 'wildcard_public_suffix'],
    ['foo*.com', 'wildcard_partial'],
    ['*foo.example.com', 'wildcard_partial'],
    ['a.*.example.com', 'wildcard_partial'],
    ['*.*.example.com', 'wildcard_partial'],
    ['127.1', 'host_numeric'],
    ['0x7f.0.0.1', 'host_numeric'],
    ['2130706433', 'host_numeric'],
    ['010.0.0.1', 'host_numeric'],
    ['example.123', 'host_numeric'],
    ['localhost', 'host_loopback_name'],
    ['db.localhost', 'host_loopback_name'],
    ['a_b.example.com', 'host_invalid'],
    ['-a.example.com', 'host_invalid'],
    ['a-.example.com', 'host_invalid'],
    ['a..example.com', 'host_invalid'],
    ['.example.com', 'host_invalid'],
    ['api.example.com:443', 'host_invalid'],
    ['https://api.example.com', 'host_invalid'],
    [' api.example.com', 'host_invalid'],
    ['[fe80::1%eth0]', 'host_invalid'],
    [`${'a'.repeat(64)}.example.com`, 'host_invalid'],
    ['xn--a.example.com', 'host_invalid'],
    [`${'abcdefghi.'.repeat(26)}com`, 'host_invalid'],
  ])('%j is refused with %s', (input, code) => {
    const r = parseHostPattern(input);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.code).toBe(code);
  });

  it('keeps the built-in public-suffix list normalized and refused', () => {
    for (const s of PUBLIC_SUFFIX_LIKE) {
      expect(normalizeName(s)).toEqual({ ok: true, name: s });
      expect(parseHostPattern(`*.${s}`)).toMatchObject({ ok: false, code: 'wildcard_public_suffix' });
    }
  });
});

describe('matchHost', () => {
  it.each([
    ['*.example.com', 'a.example.com', true],
    ['*.example.com', 'a.b.example.com', true],
    ['*.example.com', 'A.EXAMPLE.COM.', true],
    ['*.example.com', 'example.com', false],
    ['*.example.com', 'badexample.com', false],
    ['*.example.com', 'example.com.evil.net', false],
    ['api.example.com', 'API.example.com.', true],
    ['api.example.com', 'www.api.example.com', false],
    ['bücher.de', 'xn--bcher-kva.de', true],
    ['*.xn--bcher-kva.de', 'shop.BÜCHER.de', true],
    ['203.0.113.7', '203.0.113.7', true],
    ['[2001:db8::1]', '2001:DB8:0::1', true],
    ['203.0.113.7', '203.0.113.8', false],
    ['*.example.com', '203.0.113.7', false],
    ['example.com', '127.1', false],
    ['*', 'anything.example.com', false],
    ['*.com', 'example.com', false],
  ])('%s vs %s → %s', (pattern, host, want) => {
    expect(matchHost(pattern, host)).toBe(want);
  });

  it('property: a name matched by *.S always ends with .S and is longer than it', () => {
    fc.assert(
      fc.property(name, fc.array(label, { minLength: 0, maxLength: 3 }), label, (suffix, below, other) => {
        const candidate = [...below, other, suffix].join('.');
        const pattern = `*.${suffix}`;
        if (matchHost(pattern, candidate)) {
          expect(candidate.endsWith(`.${suffix}`)).toBe(true);
          expect(candidate.length).toBeGreaterThan(suffix.length + 1);
        }
        expect(matchHost(pattern, candidate)).toBe(true);
        expect(matchHost(pattern, suffix)).toBe(false);
        expect(matchHost(pattern, `${other}${suffix}`)).toBe(false);
      }),
    );
  });

  it('property: any string matched by *.S ends with .S (random names)', () => {
    fc.assert(
      fc.property(name, fc.string({ maxLength: 40 }), (suffix, raw) => {
        if (matchHost(`*.${suffix}`, raw)) {
          const n = normalizeName(raw);
          expect(n.ok && n.name.endsWith(`.${suffix}`)).toBe(true);
        }
      }),
    );
  });

  it('property: matching is case-insensitive and ignores one trailing dot', () => {
    fc.assert(
      fc.property(name, fc.boolean(), (n, dot) => {
        const variant = n.toUpperCase() + (dot ? '.' : '');
        expect(matchHost(n, variant)).toBe(true);
        expect(matchHost(`*.${n}`, `x.${variant}`)).toBe(true);
      }),
    );
  });

  it('property: an exact pattern matches only its own name', () => {
    fc.assert(
      fc.property(name, name, (a, b) => {
        expect(matchHost(a, b)).toBe(a === b);
      }),
    );
  });

  it('property: names never match IP patterns and IPs never match name patterns', () => {
    fc.assert(
      fc.property(fc.ipV4(), name, (ip, n) => {
        expect(matchHost(ip, n)).toBe(false);
        expect(matchHost(n, ip)).toBe(false);
        expect(matchHost(`*.${n}`, ip)).toBe(false);
      }),
    );
  });

  it('property: IP literals round-trip through canonical form', () => {
    fc.assert(
      fc.property(fc.oneof(fc.ipV4(), fc.ipV6()), (ip) => {
        const p = parseIp(ip);
        expect(p).toBeDefined();
        const canon = formatIp(p!);
        expect(parseIp(canon)).toEqual(p);
        expect(matchHost(ip, canon)).toBe(true);
      }),
    );
  });
});

describe('specificity', () => {
  it('orders exact/IP above wildcards and longer suffixes above shorter', () => {
    const s = (p: string) => {
      const r = parseHostPattern(p);
      if (!r.ok) throw new Error(p);
      return specificity(r.pattern);
    };
    expect(s('api.example.com')).toBeGreaterThan(s('*.a.b.example.com'));
    expect(s('203.0.113.7')).toBe(s('api.example.com'));
    expect(s('*.eu.example.com')).toBeGreaterThan(s('*.example.com'));
  });
});

describe('parseDestination', () => {
  it.each([
    ['api.example.com', 'api.example.com', 443],
    ['api.example.com:8443', 'api.example.com', 8443],
    ['https://API.example.com/v1/x?y#z', 'api.example.com', 443],
    ['http://api.example.com', 'api.example.com', 80],
    ['wss://api.example.com:9000/socket', 'api.example.com', 9000],
    ['[2001:db8::1]:8443', '2001:db8::1', 8443],
    ['2001:db8::1', '2001:db8::1', 443],
    ['https://[2001:db8::1]/', '2001:db8::1', 443],
    ['203.0.113.7:80', '203.0.113.7', 80],
  ])('%s', (input, host, port) => {
    const r = parseDestination(input);
    expect(r.ok && r.dest).toMatchObject({ host, port });
  });
  it.each(['', 'api.example.com:0', 'api.example.com:65536', 'api.example.com:x', 'ftp://a.example.com', 'https://u:p@a.example.com', '*.example.com', '127.1', '[::1'])(
    '%j is refused',
    (input) => {
      expect(parseDestination(input).ok).toBe(false);
    },
  );
  it('formats host:port with brackets for IPv6', () => {
    expect(formatHostPort('2001:db8::1', 443)).toBe('[2001:db8::1]:443');
    expect(formatHostPort('a.example.com', 443)).toBe('a.example.com:443');
  });
});
