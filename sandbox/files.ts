import path from 'node:path/posix';
import { PortcullisError } from '../common/errors.js';

/**
 * Path rules of the file tools (read, write, list, edit). The host checks twice: the requested path
 * (lexically normalized) before asking the agent anything, and the canonical path the agent resolved
 * inside the sandbox (symlinks followed) before any byte is read or written. The agent then refuses to
 * act when the path no longer resolves to that canonical path (a symlink swapped in between) and opens
 * the final component without following links.
 *
 * File operations are confined to the roots (default /workspace and /tmp); /proc, /sys, /dev and the
 * read-only image are out of reach of the file tools (a command can still read the image).
 */

export type FileOp = 'read' | 'write' | 'list';

interface DenyEntry {
  /** consecutive path segments, compared case-insensitively */
  seq: string[];
  /** which operations it refuses */
  ops: readonly FileOp[];
  why: string;
}

const WRITE: readonly FileOp[] = ['write'];
const ALL: readonly FileOp[] = ['read', 'write', 'list'];

/** The mandatory deny paths (shared/reference/11-security.md); always on, whatever the configuration. */
export const MANDATORY_DENY: readonly DenyEntry[] = [
  ...['.bashrc', '.bash_profile', '.zshrc', '.zprofile', '.profile', '.bash_login', '.bash_logout', '.zshenv', '.zlogin'].map((s) => ({
    seq: [s],
    ops: WRITE,
    why: 'shell start-up file',
  })),
  { seq: ['.gitconfig'], ops: WRITE, why: 'git configuration (hooksPath)' },
  { seq: ['.gitmodules'], ops: WRITE, why: 'git submodule URLs' },
  { seq: ['.git', 'hooks'], ops: WRITE, why: 'git hooks' },
  { seq: ['.mcp.json'], ops: WRITE, why: 'MCP server configuration' },
  ...['.claude', '.claude-code', '.codex', '.opencode'].map((s) => ({ seq: [s], ops: WRITE, why: 'agent CLI configuration' })),
  ...['.vscode', '.idea'].map((s) => ({ seq: [s], ops: WRITE, why: 'IDE configuration' })),
  ...['.ssh', '.aws', '.gcp', '.kube'].map((s) => ({ seq: [s], ops: ALL, why: 'credential store' })),
  { seq: ['.local', 'bin'], ops: WRITE, why: 'user PATH directory' },
];

export interface PathRulesOptions {
  /** Canonical absolute directories the file tools may touch. */
  roots: readonly string[];
  /** The sandbox user's home directory (its `bin` is a PATH directory). */
  home: string;
  /** Directories on the sandbox PATH: nothing may be written into them. */
  pathDirs: readonly string[];
  /** Extra sequences such as `.git/config`, denied for writes. */
  extraDeny?: readonly string[];
  /** Relative paths are resolved against this directory. */
  cwd: string;
}

export type PathVerdict = { ok: true; path: string } | { ok: false; reason: string };

export const MAX_PATH_LENGTH = 4096;

export class PathRules {
  private readonly deny: DenyEntry[];
  private readonly roots: string[];
  private readonly binDirs: string[];

  constructor(private readonly opts: PathRulesOptions) {
    for (const r of opts.roots) if (!path.isAbsolute(r) || path.normalize(r) !== r || r === '/') throw new RangeError(`root '${r}' must be a canonical absolute path other than /`);
    this.roots = [...opts.roots];
    this.deny = [
      ...MANDATORY_DENY,
      ...(opts.extraDeny ?? []).map((s) => ({ seq: s.split('/'), ops: WRITE, why: 'configured deny path' })),
    ];
    // `bin/*` directly under a root or the home directory, and every PATH directory.
    this.binDirs = [...new Set([...this.roots.map((r) => `${r}/bin`), `${opts.home}/bin`, ...opts.pathDirs.map((d) => path.normalize(d))])];
  }

  /**
   * Lexical normalization of a caller's path: relative paths are taken from cwd; `.`/`..` folded;
   * NUL bytes, empty paths and over-long paths refused.
   */
  normalize(p: string): PathVerdict {
    if (typeof p !== 'string' || p.length === 0) return { ok: false, reason: 'empty path' };
    if (p.includes('\0')) return { ok: false, reason: 'NUL byte in path' };
    if (p.length > MAX_PATH_LENGTH) return { ok: false, reason: 'path too long' };
    const abs = path.isAbsolute(p) ? p : path.join(this.opts.cwd, p);
    return { ok: true, path: stripSlash(path.normalize(abs)) };
  }

  /** Checks an absolute, normalized path (requested or canonical) for one operation. */
  check(p: string, op: FileOp): PathVerdict {
    if (!path.isAbsolute(p) || p.includes('\0') || stripSlash(path.normalize(p)) !== p) return { ok: false, reason: 'not a normalized absolute path' };
    const root = this.roots.find((r) => p === r || p.startsWith(`${r}/`));
    if (root === undefined) return { ok: false, reason: `outside the file roots (${this.roots.join(', ')})` };
    if (op === 'write' && p === root) return { ok: false, reason: 'cannot write a root directory' };
    const segs = p.split('/').filter((s) => s !== '').map((s) => s.toLowerCase());
    for (const d of this.deny) {
      if (!d.ops.includes(op)) continue;
      if (containsSequence(segs, d.seq.map((s) => s.toLowerCase()))) return { ok: false, reason: `denied path (${d.why}: ${d.seq.join('/')})` };
    }
    if (op === 'write') {
      for (const b of this.binDirs) {
        if (p === b || p.startsWith(`${b}/`)) return { ok: false, reason: `denied path (PATH directory: ${b})` };
      }
    }
    return { ok: true, path: p };
  }

  /** normalize + check, throwing `path_denied`. */
  require(p: string, op: FileOp): string {
    const n = this.normalize(p);
    if (!n.ok) throw denied(p, n.reason);
    const c = this.check(n.path, op);
    if (!c.ok) throw denied(p, c.reason);
    return c.path;
  }
}

function stripSlash(p: string): string {
  return p.length > 1 && p.endsWith('/') ? p.slice(0, -1) : p;
}

function containsSequence(segs: readonly string[], seq: readonly string[]): boolean {
  if (seq.length === 0 || seq.length > segs.length) return false;
  outer: for (let i = 0; i + seq.length <= segs.length; i++) {
    for (let j = 0; j < seq.length; j++) if (segs[i + j] !== seq[j]) continue outer;
    return true;
  }
  return false;
}

export function denied(p: string, reason: string): PortcullisError {
  return new PortcullisError('path_denied', `path '${p.slice(0, 256)}' refused: ${reason}`, {
    publicMessage: `path refused: ${reason}`,
    details: { reason },
  });
}

/**
 * The edit tool: replace `oldString` by `newString`. Exactly one occurrence unless `replaceAll`;
 * zero occurrences, an empty `oldString` or an ambiguous match are errors.
 */
export function applyEdit(content: string, oldString: string, newString: string, replaceAll = false): { content: string; replacements: number } {
  if (oldString.length === 0) throw new PortcullisError('edit_failed', 'oldString is empty', { publicMessage: 'oldString must not be empty' });
  if (oldString === newString) throw new PortcullisError('edit_failed', 'oldString equals newString', { publicMessage: 'oldString and newString are identical' });
  let count = 0;
  for (let i = content.indexOf(oldString); i !== -1; i = content.indexOf(oldString, i + oldString.length)) count++;
  if (count === 0) throw new PortcullisError('edit_failed', 'oldString not found', { publicMessage: 'oldString not found in the file' });
  if (count > 1 && !replaceAll) {
    throw new PortcullisError('edit_failed', `oldString occurs ${count} times`, {
      publicMessage: `oldString occurs ${count} times; give more context or set replaceAll`,
      details: { occurrences: count },
    });
  }
  if (!replaceAll) {
    const i = content.indexOf(oldString);
    return { content: content.slice(0, i) + newString + content.slice(i + oldString.length), replacements: 1 };
  }
  return { content: content.split(oldString).join(newString), replacements: count };
}

/** UTF-8 text when the bytes are valid UTF-8 without NUL, base64 otherwise. */
export function encodeFileContent(data: Buffer): { content: string; encoding: 'utf8' | 'base64' } {
  if (!data.includes(0)) {
    try {
      const text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(data);
      return { content: text, encoding: 'utf8' };
    } catch {
      // not UTF-8
    }
  }
  return { content: data.toString('base64'), encoding: 'base64' };
}

export function decodeFileContent(content: string, encoding: 'utf8' | 'base64' = 'utf8'): Buffer {
  if (encoding === 'base64') {
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(content.replace(/\s+/g, ''))) {
      throw new PortcullisError('file_error', 'content is not valid base64', { publicMessage: 'content is not valid base64' });
    }
    return Buffer.from(content, 'base64');
  }
  return Buffer.from(content, 'utf8');
}
