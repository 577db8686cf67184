import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decideToolCall, toolsVisibleTo, egressView } from './access.js';
import { argumentDigest, canonicalJson, checkEnvelope } from './jsonrpc.js';
import { policyIr } from './testkit.js';
import { checkToolArgs, toolDescriptors, TOOL_NAMES } from './tools.js';

describe('tool schemas', () => {
  it('every tool publishes a closed JSON Schema', () => {
    for (const d of toolDescriptors()) {
      expect(d.inputSchema.type).toBe('object');
      expect(d.inputSchema.additionalProperties).toBe(false);
      expect(d.inputSchema).not.toHaveProperty('$schema');
    }
    expect(toolDescriptors().map((d) => d.name)).toEqual([...TOOL_NAMES]);
  });

  it('refuses any unknown field on any tool, and names it without echoing values', () => {
    fc.assert(
      fc.property(fc.constantFrom(...TOOL_NAMES), fc.string({ minLength: 1, maxLength: 20 }), fc.string(), (tool, key, value) => {
        const valid: Record<string, unknown> = {
          exec: { command: ['x'] },
          read_file: { path: '/a' },
          write_file: { path: '/a', content: '' },
          edit_file: { path: '/a', oldString: 'a', newString: 'b' },
          list_files: { path: '/' },
          egress_policy: {},
        }[tool] as Record<string, unknown>;
        fc.pre(!Object.hasOwn(valid, key) && !['cwd', 'stdin', 'timeoutMs', 'maxBytes', 'encoding', 'replaceAll', '__proto__'].includes(key));
        const r = checkToolArgs(tool, { ...valid, [key]: `SECRET${value}` });
        expect(r.ok).toBe(false);
        if (!r.ok) expect(r.message).not.toContain('SECRET');
      }),
    );
  });

  it('bounds lengths and formats, and normalizes paths before the policy sees them', () => {
    expect(checkToolArgs('read_file', { path: 'relative' }).ok).toBe(false);
    expect(checkToolArgs('read_file', { path: `/${'a'.repeat(5000)}` }).ok).toBe(false);
    expect(checkToolArgs('exec', { command: [''] }).ok).toBe(false);
    expect(checkToolArgs('exec', { command: ['x'], stdin: 'y'.repeat(1024 * 1024 + 1) }).ok).toBe(false);
    expect(checkToolArgs('exec', { command: ['x'], timeoutMs: 1.5 }).ok).toBe(false);
    expect(checkToolArgs('write_file', { path: '/a', content: '', encoding: 'latin1' }).ok).toBe(false);
    expect(checkToolArgs('read_file', { path: '/work/./x/../y' })).toEqual({ ok: true, tool: 'read_file', args: { path: '/work/y' } });
  });
});

describe('tool visibility and decisions', () => {
  const ir = policyIr(`      - { callers: ["*"], tools: ["*"], effect: allow }
      - { callers: [bob], tools: [exec], effect: deny }
      - { callers: [bob], tools: [write_file], effect: deny, arguments: [{ name: path, pathPrefix: /etc }] }
      - { callers: [eve], tools: [read_file], effect: allow, arguments: [{ name: path, pathPrefix: /work }] }
`);
  it('a tool with an unconditional deny is hidden; a conditional deny leaves it listed', () => {
    expect(toolsVisibleTo(ir, 'bob')).not.toContain('exec');
    expect(toolsVisibleTo(ir, 'bob')).toContain('write_file');
    expect(toolsVisibleTo(ir, 'alice')).toEqual([...TOOL_NAMES]);
    const none = policyIr('      - { callers: [alice], tools: [read_file], effect: allow, arguments: [{ name: path, pathPrefix: /work }] }\n');
    expect(toolsVisibleTo(none, 'alice')).toEqual(['read_file']);
    expect(toolsVisibleTo(none, 'bob')).toEqual([]);
  });

  it('decides on normalized arguments', () => {
    expect(decideToolCall(ir, 'bob', 'write_file', { path: '/tmp/../etc/x', content: '' })).toMatchObject({ allow: false, denial: { reason: 'argument_denied' } });
    expect(decideToolCall(ir, 'bob', 'write_file', { path: '/tmp/x', content: '' }).allow).toBe(true);
  });

  it('egress_policy lists destinations, never credential names or the deny-set', () => {
    const v = egressView(ir);
    expect(v.destinations.map((d) => d.host)).toEqual(['api.example.com', 'pypi.org']);
    expect(JSON.stringify(v)).not.toMatch(/\d+\.\d+\.\d+\.\d+\/\d+/);
  });
});

describe('JSON-RPC envelope and argument digest', () => {
  it('the digest is over canonical JSON: key order does not matter, values do', () => {
    expect(argumentDigest({ a: 1, b: [1, { c: 2, d: 3 }] })).toBe(argumentDigest({ b: [1, { d: 3, c: 2 }], a: 1 }));
    expect(argumentDigest({ a: 1 })).not.toBe(argumentDigest({ a: 2 }));
    expect(canonicalJson({ b: 1, a: undefined, c: 'x' })).toBe('{"b":1,"c":"x"}');
  });

  it('accepts one closed message; refuses batches, extra members and wrong versions', () => {
    expect(checkEnvelope('{"jsonrpc":"2.0","id":1,"method":"tools/list"}').ok).toBe(true);
    expect(checkEnvelope('[]').ok).toBe(false);
    expect(checkEnvelope('{"jsonrpc":"2.0","id":1,"method":"x","y":1}').ok).toBe(false);
    expect(checkEnvelope('{"jsonrpc":"2.0","id":{"a":1},"method":"x"}').ok).toBe(false);
    expect(checkEnvelope('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"exec","arguments":[]}}').ok).toBe(false);
    const r = checkEnvelope('{"jsonrpc":"2.0","id":"k","method":"tools/call","params":{"name":"exec","arguments":{"command":["x"]}}}');
    expect(r).toMatchObject({ ok: true, toolCall: { name: 'exec', arguments: { command: ['x'] } } });
  });
});
