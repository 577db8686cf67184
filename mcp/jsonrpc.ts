import { createHash } from 'node:crypto';
import { z } from 'zod';
import { denial, type Denial, type JsonRpcId } from './errors.js';

/**
 * The closed JSON-RPC envelope accepted on the MCP path, checked by the ingress ext_authz service
 * before the gateway sees a request, and again by the gateway. One message per POST (JSON-RPC
 * batches were removed from MCP in 2025-06-18 and are refused); `tools/call` params are closed
 * (`name`, `arguments`, `_meta`), everything else is bounded.
 */

const Id = z.union([z.string().max(128), z.number().int().safe()]);
const Method = z.string().min(1).max(128).regex(/^[A-Za-z0-9_./-]+$/);
const Params = z.record(z.string(), z.unknown());

const Request = z.strictObject({ jsonrpc: z.literal('2.0'), id: Id, method: Method, params: Params.optional() });
const Notification = z.strictObject({ jsonrpc: z.literal('2.0'), method: Method, params: Params.optional() });
const Result = z.strictObject({ jsonrpc: z.literal('2.0'), id: Id, result: z.record(z.string(), z.unknown()) });
const ErrorResp = z.strictObject({
  jsonrpc: z.literal('2.0'),
  id: Id.nullable(),
  error: z.strictObject({ code: z.number().int(), message: z.string().max(4096), data: z.unknown().optional() }),
});

export const ToolCallParams = z.strictObject({
  name: z.string().min(1).max(128),
  arguments: z.record(z.string(), z.unknown()).optional(),
  _meta: z.record(z.string(), z.unknown()).optional(),
});

export type Envelope =
  | { kind: 'request'; id: string | number; method: string; params?: Record<string, unknown> }
  | { kind: 'notification'; method: string; params?: Record<string, unknown> }
  | { kind: 'response'; id: string | number | null };

export type EnvelopeCheck =
  | { ok: true; message: Envelope; toolCall?: { name: string; arguments: Record<string, unknown> } }
  | { ok: false; id: JsonRpcId; denial: Denial };

function idOf(v: unknown): JsonRpcId {
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    const id = (v as Record<string, unknown>).id;
    if ((typeof id === 'string' && id.length <= 128) || (typeof id === 'number' && Number.isSafeInteger(id))) return id;
  }
  return null;
}

/** Parse and check one MCP message body (bytes or text). */
export function checkEnvelope(body: string | Uint8Array): EnvelopeCheck {
  let v: unknown;
  try {
    v = JSON.parse(typeof body === 'string' ? body : Buffer.from(body).toString('utf8'));
  } catch {
    return { ok: false, id: null, denial: denial('schema_invalid', '(the body is not valid JSON)') };
  }
  return checkEnvelopeValue(v);
}

export function checkEnvelopeValue(v: unknown): EnvelopeCheck {
  if (Array.isArray(v)) return { ok: false, id: null, denial: denial('schema_invalid', '(JSON-RPC batches are not accepted)') };
  const id = idOf(v);
  const req = Request.safeParse(v);
  if (req.success) {
    const m = req.data;
    if (m.method === 'tools/call') {
      const p = ToolCallParams.safeParse(m.params ?? {});
      if (!p.success) return { ok: false, id, denial: denial('schema_invalid', '(tools/call params are name, arguments and _meta)') };
      return { ok: true, message: { kind: 'request', id: m.id, method: m.method, params: m.params }, toolCall: { name: p.data.name, arguments: p.data.arguments ?? {} } };
    }
    return { ok: true, message: { kind: 'request', id: m.id, method: m.method, params: m.params } };
  }
  const note = Notification.safeParse(v);
  if (note.success) return { ok: true, message: { kind: 'notification', method: note.data.method, params: note.data.params } };
  const res = Result.safeParse(v);
  if (res.success) return { ok: true, message: { kind: 'response', id: res.data.id } };
  const err = ErrorResp.safeParse(v);
  if (err.success) return { ok: true, message: { kind: 'response', id: err.data.id } };
  return { ok: false, id, denial: denial('schema_invalid', '(not a JSON-RPC 2.0 message)') };
}

/** Canonical JSON (sorted object keys, no whitespace); `undefined` members dropped. */
export function canonicalJson(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'null';
  if (Array.isArray(v)) return `[${v.map((x) => (x === undefined ? 'null' : canonicalJson(x))).join(',')}]`;
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(',')}}`;
}

/** sha256 (hex) of the canonical JSON of a tool call's arguments: what audit records instead of them. */
export function argumentDigest(args: unknown): string {
  return createHash('sha256').update(canonicalJson(args ?? {})).digest('hex');
}
