import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { baseSandboxEnv, envPatternToRegExp, EnvPolicy, MANDATORY_ENV_DENY, proxyEnv, RESERVED_ENV } from './env.js';

const policy = new EnvPolicy({ allow: ['*'], denyPatterns: ['*_CREDENTIAL*'] });
const strict = new EnvPolicy({ allow: ['LANG', 'LC_*', 'FOO'] });

const ident = fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,20}$/);
/** random case of a string */
const anyCase = (s: string) => fc.array(fc.boolean(), { minLength: s.length, maxLength: s.length }).map((bs) => [...s].map((c, i) => (bs[i] ? c.toUpperCase() : c.toLowerCase())).join(''));

describe('env patterns', () => {
  it('`*` is the only wildcard; everything else is literal', () => {
    expect(envPatternToRegExp('LC_*').test('LC_ALL')).toBe(true);
    expect(envPatternToRegExp('LC_*').test('XLC_ALL')).toBe(false);
    expect(envPatternToRegExp('A.B').test('AXB')).toBe(false);
    expect(envPatternToRegExp('*API_KEY*').test('OPENAI_API_KEY_2')).toBe(true);
  });

  it('the mandatory set is exactly the NFR-SEC-75 list', () => {
    expect(MANDATORY_ENV_DENY).toEqual(['*_TOKEN', '*_SECRET', '*_PASSWORD', '*API_KEY*']);
  });
});

describe('EnvPolicy.filter (NFR-SEC-75)', () => {
  it('strips every name matching a mandatory pattern, in any case, even when the allowlist admits everything', () => {
    const secretName = fc.oneof(
      fc.tuple(ident, anyCase('_TOKEN')).map(([a, b]) => a + b),
      fc.tuple(ident, anyCase('_SECRET')).map(([a, b]) => a + b),
      fc.tuple(ident, anyCase('_PASSWORD')).map(([a, b]) => a + b),
      fc.tuple(fc.stringMatching(/^[A-Za-z_]?[A-Za-z0-9_]{0,8}$/), anyCase('API_KEY'), fc.stringMatching(/^[A-Za-z0-9_]{0,8}$/)).map(([a, b, c]) => a + b + c),
    );
    fc.assert(
      fc.property(secretName, fc.string(), (name, value) => {
        fc.pre(/^[A-Za-z_][A-Za-z0-9_]*$/.test(name));
        const r = policy.filter({ [name]: value.replace(/\0/g, ''), KEEP_ME: '1' });
        expect(r.env[name]).toBeUndefined();
        expect(r.env.KEEP_ME).toBe('1');
        expect(r.stripped).toContainEqual({ name, reason: 'denied_pattern' });
      }),
      { numRuns: 500 },
    );
  });

  it('keeps names that match no deny pattern when allowed', () => {
    fc.assert(
      fc.property(ident, (name) => {
        fc.pre(!policy.isDenied(name) && !policy.isReserved(name));
        expect(policy.filter({ [name]: 'v' }).env).toEqual({ [name]: 'v' });
      }),
      { numRuns: 300 },
    );
  });

  it('applies configured patterns on top of the mandatory ones', () => {
    expect(policy.filter({ DB_CREDENTIALS: 'x' }).env).toEqual({});
    expect(strict.filter({ DB_CREDENTIALS: 'x' }).stripped).toEqual([{ name: 'DB_CREDENTIALS', reason: 'not_allowed' }]);
  });

  it('admits only allowlisted names', () => {
    const r = strict.filter({ LANG: 'C', LC_ALL: 'C', FOO: 'x', BAR: 'y' });
    expect(r.env).toEqual({ LANG: 'C', LC_ALL: 'C', FOO: 'x' });
    expect(r.stripped).toEqual([{ name: 'BAR', reason: 'not_allowed' }]);
  });

  it('never lets a caller set or override the proxy, trust-store or loader variables', () => {
    for (const name of RESERVED_ENV) {
      const r = policy.filter({ [name]: 'http://evil:1' });
      expect(r.env[name]).toBeUndefined();
    }
    expect(policy.filter({ https_proxy: 'x', Http_Proxy: 'y' }).env).toEqual({});
  });

  it('refuses invalid names and NUL in values without echoing the name', () => {
    const r = policy.filter({ 'A=B': '1', '1ABC': '2', OK: 'a\0b', '': '3' });
    expect(r.env).toEqual({});
    expect(r.stripped.every((s) => s.reason === 'invalid')).toBe(true);
    expect(r.stripped.map((s) => s.name)).toContain('(invalid name)');
  });

  it('never reports values', () => {
    const r = policy.filter({ GITHUB_TOKEN: 'ghp_supersecret' });
    expect(JSON.stringify(r.stripped)).not.toContain('ghp_supersecret');
  });
});

describe('sandbox environment', () => {
  it('the base environment comes from nowhere on the host', () => {
    process.env.PORTCULLIS_TEST_LEAK_TOKEN = 'leak-1';
    process.env.SOMETHING_ELSE = 'leak-2';
    try {
      const env = baseSandboxEnv({ hasDeploymentCa: true });
      expect(JSON.stringify(env)).not.toContain('leak-');
      expect(Object.keys(env).some((k) => policy.isDenied(k))).toBe(false);
      expect(env.SSL_CERT_FILE).toBe('/etc/ssl/certs/ca-certificates.crt');
      expect(env.REQUESTS_CA_BUNDLE).toBe(env.SSL_CERT_FILE);
      expect(env.NODE_EXTRA_CA_CERTS).toMatch(/^\/usr\/local\/share\/ca-certificates\//);
      expect(baseSandboxEnv({ hasDeploymentCa: false }).NODE_EXTRA_CA_CERTS).toBeUndefined();
      expect(env.HTTP_PROXY).toBeUndefined();
    } finally {
      delete process.env.PORTCULLIS_TEST_LEAK_TOKEN;
      delete process.env.SOMETHING_ELSE;
    }
  });

  it('proxy variables point at the gateway and carry the credential as the proxy password', () => {
    const e = proxyEnv('198.18.7.1', 15001, 'a.b+c/d');
    expect(e.HTTP_PROXY).toBe('http://session:a.b%2Bc%2Fd@198.18.7.1:15001');
    expect(e.https_proxy).toBe(e.HTTP_PROXY);
    expect(new URL(e.HTTPS_PROXY!).password).toBe('a.b%2Bc%2Fd');
    expect(decodeURIComponent(new URL(e.HTTPS_PROXY!).password)).toBe('a.b+c/d');
    expect(proxyEnv('198.18.7.1', 15001, null).HTTP_PROXY).toBe('http://198.18.7.1:15001');
    expect(e.NO_PROXY).toBe('localhost,127.0.0.1,::1');
  });
});
