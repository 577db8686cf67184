import { describe, expect, it } from 'vitest';
import { allowListPolicy, displayName, parseName, sanCovers } from './names.js';

describe('parseName', () => {
  it('canonicalises host names, wildcards and IP literals', () => {
    expect(parseName('API.Example.COM.')).toEqual({ kind: 'dns', name: 'api.example.com' });
    expect(parseName('*.Example.com')).toEqual({ kind: 'wildcard', name: '*.example.com' });
    expect(parseName('198.51.100.7')).toEqual({ kind: 'ip', name: '198.51.100.7' });
    expect(parseName('2001:DB8:0:0::1')).toEqual({ kind: 'ip', name: '2001:db8::1' });
  });

  it('refuses malformed names', () => {
    for (const bad of [
      '',
      '*',
      '*.com',
      'a.*.example.com',
      'foo*.example.com',
      '-a.example.com',
      'a..example.com',
      'a b.example.com',
      'a.example.com/x',
      '1.2.3',
      `${'a'.repeat(64)}.example.com`,
      `${'a.'.repeat(127)}com`,
      'fe80::1%eth0',
    ]) {
      expect(parseName(bad), bad).toBeNull();
    }
  });
});

describe('sanCovers', () => {
  it('matches exact names and one-label wildcards only', () => {
    expect(sanCovers('api.example.com', 'api.example.com')).toBe(true);
    expect(sanCovers('*.example.com', 'a.example.com')).toBe(true);
    expect(sanCovers('*.example.com', 'a.b.example.com')).toBe(false);
    expect(sanCovers('*.example.com', 'example.com')).toBe(false);
    expect(sanCovers('*.example.com', 'aexample.com')).toBe(false);
    expect(sanCovers('api.example.com', 'evil.com')).toBe(false);
    expect(sanCovers('*.example.com', '*.example.com')).toBe(true);
  });
});

describe('allowListPolicy', () => {
  const p = allowListPolicy(['api.example.com', '*.pythonhosted.org', '198.51.100.7']);

  it('maps exact rules to exact leaves and wildcard rules to wildcard leaves', () => {
    expect(p.isAllowed('API.example.com')).toEqual({ allowed: true, san: 'api.example.com' });
    expect(p.isAllowed('files.pythonhosted.org')).toEqual({ allowed: true, san: '*.pythonhosted.org' });
    expect(p.isAllowed('a.files.pythonhosted.org')).toEqual({ allowed: true, san: '*.files.pythonhosted.org' });
    expect(p.isAllowed('*.pythonhosted.org')).toEqual({ allowed: true, san: '*.pythonhosted.org' });
    expect(p.isAllowed('198.51.100.7')).toEqual({ allowed: true, san: '198.51.100.7' });
  });

  it('refuses everything else', () => {
    for (const n of ['example.com', 'www.example.com', 'pythonhosted.org', 'xpythonhosted.org', '*.org', '198.51.100.8', 'bad name']) {
      expect(p.isAllowed(n).allowed, n).toBe(false);
    }
  });

  it('lists the bump hosts and rejects malformed entries', () => {
    expect(p.bumpHosts?.()).toEqual(['api.example.com', '*.pythonhosted.org', '198.51.100.7']);
    expect(() => allowListPolicy(['*.com'])).toThrow(TypeError);
  });
});

describe('displayName', () => {
  it('bounds and neutralises untrusted names', () => {
    expect(displayName('a\nb\u0000c')).toBe('a?b?c');
    expect(displayName('x'.repeat(1000)).length).toBe(256);
  });
});
