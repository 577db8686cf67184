import { z } from 'zod';

/**
 * The supervisor's API as the MCP gateway (and the operator plane) see it. The gateway codes
 * against `SandboxService`; the Docker + gVisor supervisor implements it. Schemas are the single
 * source of the types (z.infer).
 */

export const ExecRequestSchema = z.strictObject({
  /** argv; argv[0] resolved in the sandbox's PATH. Never passed through a shell by the supervisor. */
  command: z.array(z.string().max(4096)).min(1).max(256),
  stdin: z.string().max(8 * 1024 * 1024).optional(),
  timeoutMs: z.number().int().min(1).max(3_600_000).optional(),
  cwd: z.string().max(4096).optional(),
  /** additions to the sandbox's environment; filtered by the env allowlist and secret-name patterns */
  env: z.record(z.string().max(256), z.string().max(65536)).optional(),
  /** per-stream cap on captured output; default 8 MiB */
  maxOutputBytes: z.number().int().min(1024).max(64 * 1024 * 1024).optional(),
});
export type ExecRequest = z.infer<typeof ExecRequestSchema>;

export const ExecOutcomeSchema = z.enum(['exited', 'timed_out', 'killed', 'oom']);

export const ExecResultSchema = z.strictObject({
  outcome: ExecOutcomeSchema,
  exitCode: z.number().int().nullable(),
  stdout: z.string(),
  stderr: z.string(),
  stdoutTruncated: z.strictObject({ droppedBytes: z.number().int().min(0) }).nullable(),
  stderrTruncated: z.strictObject({ droppedBytes: z.number().int().min(0) }).nullable(),
  durationMs: z.number(),
});
export type ExecResult = z.infer<typeof ExecResultSchema>;

export const FileEntrySchema = z.strictObject({
  name: z.string(),
  type: z.enum(['file', 'dir', 'symlink', 'other']),
  size: z.number().int().min(0),
});
export type FileEntry = z.infer<typeof FileEntrySchema>;

export const SessionInfoSchema = z.strictObject({
  /** opaque, unguessable; never shown to MCP callers */
  sessionId: z.string(),
  /** the MCP caller (token subject) that owns the session */
  owner: z.string(),
  state: z.enum(['creating', 'ready', 'quarantined', 'destroying', 'destroyed']),
  createdAt: z.string(),
  lastActiveAt: z.string(),
  expiresAt: z.string(),
  runtime: z.enum(['runsc', 'runc']),
});
export type SessionInfo = z.infer<typeof SessionInfoSchema>;

export interface SandboxService {
  createSession(owner: string): Promise<SessionInfo>;
  getSession(sessionId: string): SessionInfo | undefined;
  listSessions(): SessionInfo[];
  exec(sessionId: string, req: ExecRequest): Promise<ExecResult>;
  readFile(sessionId: string, path: string, opts?: { maxBytes?: number }): Promise<{ content: string; encoding: 'utf8' | 'base64'; size: number }>;
  writeFile(sessionId: string, path: string, content: string, opts?: { encoding?: 'utf8' | 'base64' }): Promise<{ size: number }>;
  editFile(sessionId: string, path: string, oldString: string, newString: string, opts?: { replaceAll?: boolean }): Promise<{ replacements: number }>;
  listFiles(sessionId: string, path: string): Promise<FileEntry[]>;
  destroySession(sessionId: string, reason: string): Promise<void>;
}
