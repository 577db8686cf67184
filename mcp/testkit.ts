import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PortcullisError } from '../common/errors.js';
import { compileText } from '../policy/compile.js';
import type { Ir } from '../policy/ir.js';
import type { ExecRequest, ExecResult, FileEntry, SandboxService, SessionInfo } from '../sandbox/api.js';

/**
 * An in-memory implementation of our own `SandboxService` interface, for gateway unit tests and the
 * ingress-only e2e tests (auth, limits, authorization, leaks) where no real sandbox is needed. It
 * is not a sandbox: `exec` understands `echo`, `true`, `false`, `sleep SECONDS` and `cat FILE`.
 */
export class MemorySandbox implements SandboxService {
  private readonly sessions = new Map<string, SessionInfo & { files: Map<string, Buffer> }>();
  readonly calls: Array<{ op: string; sessionId: string }> = [];
  /** make the next createSession fail */
  failCreate = false;

  async createSession(owner: string): Promise<SessionInfo> {
    if (this.failCreate) throw new PortcullisError('sandbox_failed', 'docker: container portcullis-sbx-1 failed at 10.1.2.3');
    const now = new Date();
    const info: SessionInfo & { files: Map<string, Buffer> } = {
      sessionId: `sbx_${randomBytes(16).toString('hex')}`,
      owner,
      state: 'ready',
      createdAt: now.toISOString(),
      lastActiveAt: now.toISOString(),
      expiresAt: new Date(now.getTime() + 3_600_000).toISOString(),
      runtime: 'runsc',
      files: new Map(),
    };
    this.sessions.set(info.sessionId, info);
    this.calls.push({ op: 'createSession', sessionId: info.sessionId });
    return strip(info);
  }

  getSession(sessionId: string): SessionInfo | undefined {
    const s = this.sessions.get(sessionId);
    return s ? strip(s) : undefined;
  }

  listSessions(): SessionInfo[] {
    return [...this.sessions.values()].map(strip);
  }

  /** what an operator quarantine does (the MCP path never calls it) */
  async quarantine(sessionId: string, _reason: string): Promise<void> {
    const s = this.sessions.get(sessionId);
    if (s) s.state = 'quarantined';
  }

  private live(sessionId: string, op: string) {
    this.calls.push({ op, sessionId });
    const s = this.sessions.get(sessionId);
    if (!s || s.state !== 'ready') throw new PortcullisError('session_revoked', `session ${sessionId} is not ready`);
    s.lastActiveAt = new Date().toISOString();
    return s;
  }

  async exec(sessionId: string, req: ExecRequest): Promise<ExecResult> {
    const s = this.live(sessionId, 'exec');
    const t0 = Date.now();
    const [cmd, ...args] = req.command;
    const done = (exitCode: number, stdout = '', stderr = ''): ExecResult => ({
      outcome: 'exited',
      exitCode,
      stdout,
      stderr,
      stdoutTruncated: null,
      stderrTruncated: null,
      durationMs: Date.now() - t0,
    });
    switch (cmd) {
      case 'echo':
        return done(0, `${args.join(' ')}\n`);
      case 'true':
        return done(0);
      case 'false':
        return done(1);
      case 'sleep':
        await sleep(Number(args[0] ?? 0) * 1000);
        return done(0);
      case 'cat': {
        const f = s.files.get(path.posix.normalize(args[0] ?? ''));
        return f ? done(0, f.toString('utf8')) : done(1, '', `cat: ${args[0]}: No such file or directory\n`);
      }
      case 'crash':
        throw new Error('runsc: container portcullis-sbx-abc123 at 172.17.0.2 crashed\n    at Supervisor.exec (/srv/sandbox/supervisor.ts:1:1)');
      default:
        return done(127, '', `${cmd}: not found\n`);
    }
  }

  async readFile(sessionId: string, p: string, opts?: { maxBytes?: number }): Promise<{ content: string; encoding: 'utf8' | 'base64'; size: number }> {
    const s = this.live(sessionId, 'readFile');
    if (p.startsWith('/proc')) throw new PortcullisError('path_denied', `path ${p} denied in container portcullis-sbx-1`, { publicMessage: 'That path is not accessible.' });
    const f = s.files.get(p);
    if (!f) throw new PortcullisError('path_denied', `no such file ${p}`, { publicMessage: 'No such file.' });
    const b = opts?.maxBytes !== undefined ? f.subarray(0, opts.maxBytes) : f;
    return { content: b.toString('utf8'), encoding: 'utf8', size: f.length };
  }

  async writeFile(sessionId: string, p: string, content: string, opts?: { encoding?: 'utf8' | 'base64' }): Promise<{ size: number }> {
    const s = this.live(sessionId, 'writeFile');
    const b = Buffer.from(content, opts?.encoding === 'base64' ? 'base64' : 'utf8');
    s.files.set(p, b);
    return { size: b.length };
  }

  async editFile(sessionId: string, p: string, oldString: string, newString: string, opts?: { replaceAll?: boolean }): Promise<{ replacements: number }> {
    const s = this.live(sessionId, 'editFile');
    const f = s.files.get(p);
    if (!f) throw new PortcullisError('path_denied', `no such file ${p}`, { publicMessage: 'No such file.' });
    const text = f.toString('utf8');
    const count = text.split(oldString).length - 1;
    if (count === 0 || (count > 1 && !opts?.replaceAll)) {
      throw new PortcullisError('schema_invalid', 'edit mismatch', { publicMessage: count === 0 ? 'oldString not found.' : 'oldString is not unique; use replaceAll.' });
    }
    s.files.set(p, Buffer.from(opts?.replaceAll ? text.split(oldString).join(newString) : text.replace(oldString, newString)));
    return { replacements: opts?.replaceAll ? count : 1 };
  }

  async listFiles(sessionId: string, dir: string): Promise<FileEntry[]> {
    const s = this.live(sessionId, 'listFiles');
    const prefix = dir.endsWith('/') ? dir : `${dir}/`;
    const out = new Map<string, FileEntry>();
    for (const [p, b] of s.files) {
      if (!p.startsWith(prefix)) continue;
      const rest = p.slice(prefix.length);
      const name = rest.split('/')[0]!;
      out.set(name, rest.includes('/') ? { name, type: 'dir', size: 0 } : { name, type: 'file', size: b.length });
    }
    return [...out.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  async destroySession(sessionId: string, _reason: string): Promise<void> {
    this.calls.push({ op: 'destroySession', sessionId });
    const s = this.sessions.get(sessionId);
    if (s) s.state = 'destroyed';
  }
}

function strip(s: SessionInfo & { files?: unknown }): SessionInfo {
  const { files: _f, ...rest } = s;
  return { ...rest };
}

const HEAD = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';

/** A compiled test policy: two egress destinations and the given `mcp.tools.rules` lines. */
export function policyIr(mcpToolRules: string): Ir {
  return compileText(`${HEAD}egress:\n  rung: transparent\n  allow:\n    - host: pypi.org\n    - host: api.example.com\n      ports: [8443]\nmcp:\n  tools:\n    rules:\n${mcpToolRules}`, {
    file: 'p.yaml',
    baseDir: '/etc/portcullis',
  });
}
