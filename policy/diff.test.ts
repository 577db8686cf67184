import { describe, expect, it } from 'vitest';
import { compileText } from './compile.js';
import { diffIr, formatDiff, isEmptyDiff } from './diff.js';
import type { Ir } from './ir.js';

const HEAD = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';
const ir = (body: string, file = 'p.yaml'): Ir => compileText(HEAD + body, { file, baseDir: '/etc/portcullis' });

const OLD = `egress:
  rung: transparent
  allow:
    - host: api.example.com
      rung: bump
      credential: a
    - host: old.example.com
    - host: "*.example.org"
  credentials:
    - { name: a, header: authorization, format: "Bearer {secret}", source: { file: ./a.token } }
    - { name: b, header: authorization, source: { file: ./b.token } }
storage:
  backends: [{ host: s3.example.com }]
mcp:
  tools:
    rules:
      - { callers: ["*"], tools: [exec], effect: allow }
sessions: { tokenTtl: 15m, idleTimeout: 15m }
`;

describe('diffIr', () => {
  it('reports a SOAR admin trust change (keys, audience), not a moved key entry', () => {
    const a = 'soar:\n  admin:\n    keys:\n      - { name: x, jwksFile: x.json }\n      - { name: y, jwksFile: y.json }\n';
    const moved = 'soar:\n  admin:\n    keys:\n      - { name: y, jwksFile: y.json }\n      - { name: x, jwksFile: x.json }\n';
    expect(isEmptyDiff(diffIr(ir(a), ir(moved)))).toBe(true);
    const d = diffIr(ir(a), ir('soar:\n  admin:\n    audience: other\n    keys:\n      - { name: x, jwksFile: x.json }\n'));
    expect(d.other).toEqual([
      {
        field: 'soar.admin',
        from: { audience: 'portcullis-admin', keys: [{ name: 'x', jwksFile: '/etc/portcullis/x.json' }, { name: 'y', jwksFile: '/etc/portcullis/y.json' }] },
        to: { audience: 'other', keys: [{ name: 'x', jwksFile: '/etc/portcullis/x.json' }] },
      },
    ]);
    expect(diffIr(ir(a), ir('')).other.map((o) => [o.field, o.to])).toEqual([['soar.admin', null]]);
  });

  it('is empty for the same policy, even with rules moved', () => {
    const moved = OLD.replace('    - host: old.example.com\n    - host: "*.example.org"\n', '    - host: "*.example.org"\n    - host: old.example.com\n');
    const d = diffIr(ir(OLD), ir(moved, 'q.yaml'));
    expect(isEmptyDiff(d)).toBe(true);
    expect(formatDiff(d)).toBe('No change in effective permissions.\n');
  });

  it('reports destinations gained and lost, rung and credential changes, tools and session bounds', () => {
    const NEW = OLD.replace('    - host: old.example.com\n', '    - host: new.example.com\n      ports: [443, 8443]\n')
      .replace('      credential: a\n', '      credential: b\n')
      .replace('    - host: "*.example.org"\n', '    - host: "*.example.org"\n      rung: bump\n')
      .replace('{ callers: ["*"], tools: [exec], effect: allow }', '{ callers: [alice], tools: [exec], effect: allow }')
      .replace('tokenTtl: 15m', 'tokenTtl: 30m')
      .replace('backends: [{ host: s3.example.com }]', 'backends: [{ host: s3.example.com, ports: [443, 9000] }]');
    const d = diffIr(ir(OLD), ir(NEW));
    expect(d.egress.gained).toEqual([
      { host: 'new.example.com', port: 443, rung: 'transparent', credential: null },
      { host: 'new.example.com', port: 8443, rung: 'transparent', credential: null },
    ]);
    expect(d.egress.lost).toEqual([{ host: 'old.example.com', port: 443, rung: 'transparent', credential: null }]);
    expect(d.egress.rungChanged).toEqual([{ host: '*.example.org', port: 443, from: 'transparent', to: 'bump' }]);
    expect(d.egress.credentialChanged).toEqual([{ host: 'api.example.com', port: 443, from: 'a', to: 'b' }]);
    expect(d.storage.gained).toEqual([{ host: 's3.example.com', port: 9000 }]);
    expect(d.tools.added.map((r) => r.callers)).toEqual([['alice']]);
    expect(d.tools.removed.map((r) => r.callers)).toEqual([['*']]);
    expect(d.sessions).toEqual([{ field: 'sessions.tokenTtlSeconds', from: 900, to: 1800 }]);
    const text = formatDiff(d);
    expect(text).toContain('+ new.example.com:8443  transparent');
    expect(text).toContain('- old.example.com:443  (was transparent)');
    expect(text).toContain('~ *.example.org:443  rung transparent → bump');
    expect(text).toContain('~ api.example.com:443  credential a → b');
    expect(text).toContain('~ sessions.tokenTtlSeconds 15m → 30m');
    expect(text).toContain('+ allow tools [exec] for callers [alice]');
    expect(text).toContain('Storage lane\n  + s3.example.com:9000');
  });

  it('switching the default rung to deny-all loses every destination', () => {
    const d = diffIr(ir(OLD), ir(OLD.replace('rung: transparent', 'rung: deny-all').replace(/      credential: a\n/, '').replace('      rung: bump\n', '')));
    expect(d.egress.defaultRung).toEqual({ field: 'egress.rung', from: 'transparent', to: 'deny-all' });
    expect(d.egress.gained).toEqual([]);
    expect(d.egress.lost.map((l) => l.host)).toEqual(['*.example.org', 'api.example.com', 'old.example.com']);
  });

  it('shows explicit deny rules added and removed', () => {
    const withDeny = OLD.replace('    - host: "*.example.org"\n', '    - host: "*.example.org"\n    - host: evil.example.org\n      rung: deny-all\n');
    const added = diffIr(ir(OLD), ir(withDeny));
    expect(added.egress.explicitDenyAdded).toEqual([{ host: 'evil.example.org', port: 443 }]);
    expect(formatDiff(added)).toContain('+ deny evil.example.org:443');
    const removed = diffIr(ir(withDeny), ir(OLD));
    expect(removed.egress.explicitDenyRemoved).toEqual([{ host: 'evil.example.org', port: 443 }]);
  });

  it('shows a changed credential definition without any secret', () => {
    const d = diffIr(ir(OLD), ir(OLD.replace('./a.token', './a2.token').replace('"Bearer {secret}"', '"Token {secret}"')));
    expect(d.egress.credentials).toHaveLength(1);
    expect(formatDiff(d)).toContain('~ credential a: header authorization, format "Bearer {secret}", file /etc/portcullis/a.token → header authorization, format "Token {secret}", file /etc/portcullis/a2.token');
  });

  it('reports MCP auth, limits and deployment changes', () => {
    const next = OLD.replace('mcp:\n', 'mcp:\n  limits: { maxBodyBytes: 8Mi }\n  auth: { mode: oidc, issuer: "https://idp.example.com", audience: x, jwksUri: "https://idp.example.com/jwks" }\n');
    const d = diffIr(ir(OLD), compileText(HEAD.replace('gvisor', 'runc') + next, { file: 'p.yaml', baseDir: '/etc/portcullis' }));
    const text = formatDiff(d);
    expect(text).toContain('~ mcp.limits.maxBodyBytes 4Mi → 8Mi');
    expect(text).toContain('~ mcp.auth local → oidc (issuer https://idp.example.com, audiences x, claim sub)');
    expect(text).toContain('~ deployment.runtime gvisor → runc');
  });
});
