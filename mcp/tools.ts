import path from 'node:path';
import { z } from 'zod';

/**
 * The MCP tools the gateway offers, with the closed argument schemas every call is checked against
 * before anything happens (NFR-SEC-51): unknown fields are refused, every string and list is
 * bounded, paths are absolute POSIX paths without NUL. The same schemas are used by the ingress
 * ext_authz service (xds-server/authz.ts), so Envoy and the gateway refuse the same calls.
 */

export const TOOL_NAMES = ['exec', 'read_file', 'write_file', 'edit_file', 'list_files', 'egress_policy'] as const;
export type ToolName = (typeof TOOL_NAMES)[number];

export function isToolName(s: unknown): s is ToolName {
  return typeof s === 'string' && (TOOL_NAMES as readonly string[]).includes(s);
}

export const LIMITS = {
  pathChars: 4096,
  argvItems: 256,
  argvChars: 4096,
  stdinChars: 1024 * 1024,
  maxTimeoutMs: 600_000,
  fileChars: 8 * 1024 * 1024,
  editChars: 1024 * 1024,
  readMaxBytes: 8 * 1024 * 1024,
} as const;

/** Absolute POSIX path: starts with `/`, no NUL, bounded. */
export const PathArg = z
  .string()
  .min(1)
  .max(LIMITS.pathChars)
  .regex(/^\/[^\0]*$/, { error: 'must be an absolute path' })
  .describe('Absolute path inside the sandbox.');

export const ExecArgs = z
  .strictObject({
    command: z
      .array(z.string().max(LIMITS.argvChars))
      .min(1)
      .max(LIMITS.argvItems)
      .refine((a) => (a[0] ?? '').length > 0, { error: 'command[0] must not be empty' })
      .describe('argv: the program and its arguments. Not run through a shell; use ["sh", "-c", "..."] for one.'),
    stdin: z.string().max(LIMITS.stdinChars).optional().describe('Text written to the program’s standard input.'),
    timeoutMs: z.number().int().min(1).max(LIMITS.maxTimeoutMs).optional().describe('Kill the program after this many milliseconds.'),
    cwd: PathArg.optional().describe('Working directory (absolute).'),
  })
  .describe('Run a program in the sandbox.');

export const ReadFileArgs = z
  .strictObject({
    path: PathArg,
    maxBytes: z.number().int().min(1).max(LIMITS.readMaxBytes).optional().describe('Read at most this many bytes.'),
  })
  .describe('Read a file from the sandbox.');

export const WriteFileArgs = z
  .strictObject({
    path: PathArg,
    content: z.string().max(LIMITS.fileChars).describe('File content (text, or base64 with encoding "base64").'),
    encoding: z.enum(['utf8', 'base64']).optional().describe('How content is encoded; default utf8.'),
  })
  .describe('Create or replace a file in the sandbox.');

export const EditFileArgs = z
  .strictObject({
    path: PathArg,
    oldString: z.string().min(1).max(LIMITS.editChars).describe('Exact text to replace.'),
    newString: z.string().max(LIMITS.editChars).describe('Replacement text.'),
    replaceAll: z.boolean().optional().describe('Replace every occurrence (default: exactly one must exist).'),
  })
  .describe('Replace text in a file in the sandbox.');

export const ListFilesArgs = z.strictObject({ path: PathArg }).describe('List a directory in the sandbox.');

export const EgressPolicyArgs = z.strictObject({}).describe('Describe where the sandbox may connect, and how.');

export const TOOL_SCHEMAS = {
  exec: ExecArgs,
  read_file: ReadFileArgs,
  write_file: WriteFileArgs,
  edit_file: EditFileArgs,
  list_files: ListFilesArgs,
  egress_policy: EgressPolicyArgs,
} as const satisfies Record<ToolName, z.ZodType>;

export type ToolArgs = { [K in ToolName]: z.infer<(typeof TOOL_SCHEMAS)[K]> };

const DESCRIPTIONS: Record<ToolName, string> = {
  exec: 'Run a program (argv, no shell) in your sandbox and return its exit code, stdout and stderr.',
  read_file: 'Read a file from your sandbox (text, or base64 for binary content).',
  write_file: 'Create or replace a file in your sandbox.',
  edit_file: 'Replace an exact string in a file in your sandbox (exactly one occurrence unless replaceAll).',
  list_files: 'List the entries of a directory in your sandbox.',
  egress_policy: 'Which network destinations your sandbox may reach, and how. Ask this instead of probing.',
};

const ANNOTATIONS: Record<ToolName, { readOnlyHint: boolean; destructiveHint: boolean; idempotentHint: boolean; openWorldHint: boolean }> = {
  exec: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: true },
  read_file: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  write_file: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
  edit_file: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
  list_files: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
  egress_policy: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
};

export interface ToolDescriptor {
  name: ToolName;
  description: string;
  inputSchema: { type: 'object'; [k: string]: unknown };
  annotations: (typeof ANNOTATIONS)[ToolName];
}

let descriptors: ToolDescriptor[] | undefined;

/** `tools/list` entries, JSON Schema generated from the zod schemas (closed: additionalProperties false). */
export function toolDescriptors(): readonly ToolDescriptor[] {
  descriptors ??= TOOL_NAMES.map((name) => {
    const schema = z.toJSONSchema(TOOL_SCHEMAS[name], { io: 'input' }) as Record<string, unknown>;
    delete schema.$schema;
    return {
      name,
      description: DESCRIPTIONS[name],
      inputSchema: { ...schema, type: 'object' as const },
      annotations: ANNOTATIONS[name],
    };
  });
  return descriptors;
}

export type ArgsCheck<T extends ToolName = ToolName> =
  | { ok: true; tool: T; args: ToolArgs[T] }
  | { ok: false; message: string };

/**
 * Validate a call's arguments against the tool's closed schema. The message names the offending
 * field and rule in one line; it never echoes the value.
 */
export function checkToolArgs(tool: string, args: unknown): ArgsCheck {
  if (!isToolName(tool)) return { ok: false, message: 'unknown tool' };
  const r = TOOL_SCHEMAS[tool].safeParse(args ?? {});
  if (r.success) return { ok: true, tool, args: normalizeArgs(tool, r.data as ToolArgs[ToolName]) } as ArgsCheck;
  const issue = r.error.issues[0];
  if (!issue) return { ok: false, message: 'invalid arguments' };
  const where = issue.path.length ? issue.path.map(String).join('.') : 'arguments';
  return { ok: false, message: `${where}: ${describeIssue(issue)}` };
}

function describeIssue(i: z.core.$ZodIssue): string {
  switch (i.code) {
    case 'unrecognized_keys':
      return `unknown field${i.keys.length > 1 ? 's' : ''} ${i.keys.slice(0, 5).map((k) => JSON.stringify(k.slice(0, 64))).join(', ')}`;
    case 'invalid_type':
      return `expected ${i.expected}`;
    case 'too_big':
      return `too large (maximum ${String(i.maximum)})`;
    case 'too_small':
      return `too small (minimum ${String(i.minimum)})`;
    case 'invalid_format':
      return 'has the wrong format';
    case 'invalid_value':
      return 'is not an accepted value';
    default:
      return i.message.slice(0, 120);
  }
}

/** Paths are normalized (`..` resolved) so the policy's pathPrefix decision and the action agree. */
function normalizeArgs<T extends ToolName>(tool: T, args: ToolArgs[T]): ToolArgs[T] {
  const out = { ...args } as Record<string, unknown>;
  if (typeof out.path === 'string') out.path = path.posix.normalize(out.path);
  if (tool === 'exec' && typeof out.cwd === 'string') out.cwd = path.posix.normalize(out.cwd);
  return out as ToolArgs[T];
}
