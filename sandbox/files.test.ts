import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PortcullisError } from '../common/errors.js';
import { applyEdit, decodeFileContent, encodeFileContent, MANDATORY_DENY, PathRules } from './files.js';

const rules = new PathRules({
  roots: ['/workspace', '/tmp'],
  home: '/home/sandbox',
  pathDirs: ['/usr/local/bin', '/usr/bin', '/bin', '/workspace/tools/bin'],
  extraDeny: ['.git/config'],
  cwd: '/workspace',
});

describe('PathRules.normalize', () => {
  it.each([
    ['a.txt', '/workspace/a.txt'],
    ['./a/../b', '/workspace/b'],
    ['/workspace/x/', '/workspace/x'],
    ['/workspace/../etc/passwd', '/etc/passwd'],
    ['//tmp//x', '/tmp/x'],
    ['../../../../proc/self/mem', '/proc/self/mem'],
  ])('%s → %s', (input, out) => {
    expect(rules.normalize(input)).toEqual({ ok: true, path: out });
  });

  it('refuses NUL, empty and over-long paths', () => {
    expect(rules.normalize('a\0b').ok).toBe(false);
    expect(rules.normalize('').ok).toBe(false);
    expect(rules.normalize(`/workspace/${'a'.repeat(5000)}`).ok).toBe(false);
  });

  it('never yields a path containing . or .. segments', () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom('a', 'b', '.', '..', '', 'ws'), { maxLength: 12 }), (segs) => {
        const r = rules.normalize(segs.join('/') || '.');
        expect(r.ok).toBe(true);
        if (r.ok) expect(r.path.split('/').some((s) => s === '.' || s === '..')).toBe(false);
      }),
    );
  });
});

describe('PathRules.check', () => {
  it('confines every operation to the roots', () => {
    for (const op of ['read', 'write', 'list'] as const) {
      expect(rules.check('/workspace/a', op).ok).toBe(true);
      expect(rules.check('/tmp/a', op).ok).toBe(true);
      for (const p of ['/etc/passwd', '/proc/1/environ', '/proc/self/mem', '/sys/kernel', '/dev/mem', '/workspacex/a', '/', '/home/sandbox/.cache/x']) {
        expect(rules.check(p, op).ok, `${op} ${p}`).toBe(false);
      }
    }
  });

  it('refuses writing a root itself but allows listing it', () => {
    expect(rules.check('/workspace', 'write').ok).toBe(false);
    expect(rules.check('/workspace', 'list').ok).toBe(true);
  });

  it('refuses to write every mandatory deny path, at any depth and in any case', () => {
    for (const d of MANDATORY_DENY) {
      const tail = d.seq.join('/');
      for (const p of [`/workspace/${tail}`, `/workspace/proj/${tail}`, `/tmp/${tail}/inside`, `/workspace/${tail.toUpperCase()}`]) {
        const v = rules.check(p, 'write');
        expect(v.ok, p).toBe(false);
      }
    }
  });

  it('covers the 11-security.md table', () => {
    const must = [
      '/workspace/.bashrc',
      '/workspace/.bash_profile',
      '/workspace/.zshrc',
      '/workspace/.zprofile',
      '/workspace/.profile',
      '/workspace/.gitconfig',
      '/workspace/repo/.gitmodules',
      '/workspace/repo/.git/hooks/pre-commit',
      '/workspace/repo/.git/hooks',
      '/workspace/.mcp.json',
      '/workspace/.claude/settings.json',
      '/workspace/.claude-code/x',
      '/workspace/.codex/config.toml',
      '/workspace/.opencode/x',
      '/workspace/.vscode/tasks.json',
      '/workspace/.idea/workspace.xml',
      '/workspace/.ssh/authorized_keys',
      '/workspace/.aws/credentials',
      '/workspace/.gcp/key.json',
      '/workspace/.kube/config',
      '/workspace/.local/bin/ls',
      '/workspace/bin/ls',
      '/tmp/bin/python3',
      '/workspace/tools/bin/x',
      '/workspace/repo/.git/config',
    ];
    for (const p of must) expect(rules.check(p, 'write').ok, p).toBe(false);
  });

  it('refuses reading and listing credential stores, allows reading other deny paths', () => {
    expect(rules.check('/workspace/.ssh/id_rsa', 'read').ok).toBe(false);
    expect(rules.check('/workspace/.aws', 'list').ok).toBe(false);
    expect(rules.check('/workspace/.bashrc', 'read').ok).toBe(true);
    expect(rules.check('/workspace/repo/.git/hooks/pre-commit.sample', 'read').ok).toBe(true);
  });

  it('allows ordinary project files, including look-alikes', () => {
    for (const p of [
      '/workspace/src/main.py',
      '/workspace/.github/workflows/ci.yml',
      '/workspace/repo/.git/HEAD',
      '/workspace/repo/.gitignore',
      '/workspace/notes.bashrc.txt',
      '/workspace/sub/bin/tool',
      '/workspace/binary',
      '/workspace/.sshx/file',
    ]) {
      expect(rules.check(p, 'write').ok, p).toBe(true);
    }
  });

  it('rejects non-normalized input to check (callers normalize first)', () => {
    expect(rules.check('/workspace/../etc/x', 'read').ok).toBe(false);
    expect(rules.check('workspace/a', 'read').ok).toBe(false);
  });

  it('require throws path_denied with a public reason', () => {
    try {
      rules.require('.bashrc', 'write');
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(PortcullisError);
      expect((e as PortcullisError).code).toBe('path_denied');
      expect((e as PortcullisError).publicMessage).toMatch(/shell start-up file/);
    }
  });
});

describe('applyEdit', () => {
  it('replaces exactly one occurrence', () => {
    expect(applyEdit('a b c', 'b', 'x')).toEqual({ content: 'a x c', replacements: 1 });
  });
  it('refuses zero and ambiguous matches unless replaceAll', () => {
    expect(() => applyEdit('abc', 'z', 'y')).toThrow(/not found/);
    expect(() => applyEdit('a a', 'a', 'b')).toThrow(/2 times/);
    expect(applyEdit('a a', 'a', 'b', true)).toEqual({ content: 'b b', replacements: 2 });
    expect(() => applyEdit('abc', '', 'y')).toThrow(/empty/);
  });
  it('counts non-overlapping occurrences the way replaceAll applies them', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), fc.string({ minLength: 1, maxLength: 3 }), fc.string({ maxLength: 3 }), (content, oldS, newS) => {
        fc.pre(oldS !== newS && content.includes(oldS));
        const r = applyEdit(content, oldS, newS, true);
        expect(r.content).toBe(content.split(oldS).join(newS));
        expect(r.replacements).toBe(content.split(oldS).length - 1);
      }),
    );
  });
});

describe('file content encoding', () => {
  it('utf8 for text, base64 for binary, round trip', () => {
    expect(encodeFileContent(Buffer.from('héllo\n'))).toEqual({ content: 'héllo\n', encoding: 'utf8' });
    const bin = Buffer.from([0xff, 0x00, 0x01]);
    const e = encodeFileContent(bin);
    expect(e.encoding).toBe('base64');
    expect(decodeFileContent(e.content, e.encoding)).toEqual(bin);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        const b = Buffer.from(bytes);
        const enc = encodeFileContent(b);
        expect(decodeFileContent(enc.content, enc.encoding)).toEqual(b);
      }),
    );
  });
  it('rejects malformed base64', () => {
    expect(() => decodeFileContent('not base64!', 'base64')).toThrow(/base64/);
  });
});
