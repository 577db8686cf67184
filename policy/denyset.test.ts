import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DENY_SET, DENY_SET_CIDRS, deniedBy, isDenied } from './denyset.js';
import { formatIpv6, parseIpv4 } from './ip.js';

describe('deny-set', () => {
  it.each([
    '0.0.0.0', '0.1.2.3', '10.0.0.1', '10.255.255.255', '100.64.0.1', '100.127.255.255', '127.0.0.1', '127.255.0.1',
    '169.254.169.254', '172.16.0.1', '172.31.255.255', '192.168.0.1', '198.18.0.1', '198.19.255.254', '224.0.0.1',
    '239.255.255.250', '255.255.255.255', '::', '::1', '[::1]', 'fc00::1', 'fd12:3456::1', 'fd00:ec2::254', 'fe80::1',
    'febf::1', 'ff02::1', '::ffff:127.0.0.1', '::ffff:10.1.2.3', '::ffff:169.254.169.254', '::ffff:a9fe:a9fe',
    '64:ff9b::127.0.0.1', '64:ff9b::a9fe:a9fe', '64:ff9b::c612:1',
  ])('%s is denied', (ip) => {
    expect(isDenied(ip)).toBe(true);
  });

  it.each(['8.8.8.8', '1.1.1.1', '203.0.113.7', '198.51.100.10', '172.32.0.1', '100.128.0.1', '198.20.0.1', '2001:db8::1', '2606:4700::1111', '::ffff:8.8.8.8', '64:ff9b::808:808', 'fec0::1'])(
    '%s is not denied',
    (ip) => {
      expect(isDenied(ip)).toBe(false);
    },
  );

  it('names the entry that denies an address', () => {
    expect(deniedBy('169.254.169.254')?.cidr).toBe('169.254.0.0/16');
    expect(deniedBy('::ffff:10.0.0.1')?.cidr).toBe('::ffff:10.0.0.0/104');
    expect(deniedBy('64:ff9b::7f00:1')?.cidr).toBe('64:ff9b::7f00:0/104');
  });

  it('throws on non-IP text', () => {
    expect(() => isDenied('example.com')).toThrow(TypeError);
  });

  it('contains the mandatory entries of invariant 4 and the mapped / NAT64 form of every IPv4 entry', () => {
    for (const c of ['127.0.0.0/8', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '169.254.0.0/16', 'fc00::/7', 'fe80::/10', 'fd00:ec2::254/128', '0.0.0.0/8', '224.0.0.0/4', 'ff00::/8', '198.18.0.0/15', '::1/128']) {
      expect(DENY_SET_CIDRS).toContain(c);
    }
    const v4 = DENY_SET_CIDRS.filter((c) => !c.includes(':'));
    for (const c of v4) {
      const [base, len] = c.split('/') as [string, string];
      expect(DENY_SET_CIDRS).toContain(`::ffff:${base}/${96 + Number(len)}`);
      expect(DENY_SET_CIDRS).toContain(`${formatIpv6((0x64ff9bn << 96n) | parseIpv4(base)!)}/${96 + Number(len)}`);
    }
    expect(DENY_SET.every((e) => e.reason.length > 0)).toBe(true);
    expect(Object.isFrozen(DENY_SET)).toBe(true);
  });

  it('property: an IPv4 address and its IPv4-mapped and NAT64 forms share a verdict', () => {
    fc.assert(
      fc.property(fc.ipV4(), (ip) => {
        const d = isDenied(ip);
        expect(isDenied(`::ffff:${ip}`)).toBe(d);
        expect(isDenied(`64:ff9b::${ip}`)).toBe(d);
      }),
    );
  });
});
