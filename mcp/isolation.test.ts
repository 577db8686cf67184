import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { CALLER_HEADER, McpGateway } from './gateway.js';
import { MemorySandbox, policyIr } from './testkit.js';
import { TOOL_NAMES } from './tools.js';

/**
 * NFR-SEC-52: the gateway holds no upstream credential and has no route to the operator API or any
 * lifecycle mutation. Checked three ways: what it imports, what it touches on the supervisor, and
 * what it offers.
 */

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Every project module reachable by static imports from `entry`, and every package it imports. */
function importGraph(entry: string): { modules: Set<string>; packages: Set<string> } {
  const modules = new Set<string>();
  const packages = new Set<string>();
  const visit = (file: string) => {
    if (modules.has(file)) return;
    modules.add(file);
    const src = fs.readFileSync(path.join(root, file), 'utf8');
    for (const m of src.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+'([^']+)'/gms)) {
      const spec = m[1]!;
      if (m[0].trimStart().startsWith('import type') || m[0].trimStart().startsWith('export type')) continue;
      if (spec.startsWith('.')) visit(path.relative(root, path.resolve(path.dirname(path.join(root, file)), spec.replace(/\.js$/, '.ts'))));
      else packages.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!);
    }
  };
  visit(entry);
  return { modules, packages };
}

describe('gateway isolation (NFR-SEC-52)', () => {
  it('imports nothing of the control plane, the operator/audit plane, the minter, the CLI or Docker', () => {
    const { modules, packages } = importGraph('mcp/gateway.ts');
    const dirs = new Set([...modules].map((m) => m.split('/')[0]));
    expect([...dirs].sort()).toEqual(['common', 'mcp', 'policy']);
    expect([...modules].filter((m) => m.startsWith('sandbox/'))).toEqual([]);
    const allowed = new Set(['@modelcontextprotocol/sdk', 'zod', 'yaml', 'pino', 'node:crypto', 'node:events', 'node:fs', 'node:http', 'node:path', 'node:perf_hooks', 'node:url']);
    expect([...packages].filter((p) => !allowed.has(p))).toEqual([]);
    for (const p of ['@grpc/grpc-js', 'dockerode', 'node-forge', 'node:child_process', 'node:net', 'jose']) expect(packages.has(p), p).toBe(false);
  });

  it('uses only its own sessions on the supervisor: no listing, no quarantine, no other lifecycle call', async () => {
    const real = new MemorySandbox();
    const touched = new Set<string>();
    const sandbox = new Proxy(real, {
      get(t, p, r) {
        if (typeof p === 'string') touched.add(p);
        const v = Reflect.get(t, p, r);
        return typeof v === 'function' ? v.bind(t) : v;
      },
    });
    const gw = await McpGateway.start({ sandbox, policy: () => policyIr('      - { callers: ["*"], tools: ["*"], effect: allow }\n'), logger: silentLogger() });
    try {
      const client = new Client({ name: 't', version: '1' });
      const transport = new StreamableHTTPClientTransport(new URL(`http://${gw.address}/mcp`), { requestInit: { headers: { [CALLER_HEADER]: 'alice' } } });
      await client.connect(transport);
      await client.callTool({ name: 'exec', arguments: { command: ['true'] } });
      await client.callTool({ name: 'write_file', arguments: { path: '/a', content: 'x' } });
      await client.callTool({ name: 'edit_file', arguments: { path: '/a', oldString: 'x', newString: 'y' } });
      await client.callTool({ name: 'read_file', arguments: { path: '/a' } });
      await client.callTool({ name: 'list_files', arguments: { path: '/' } });
      await client.callTool({ name: 'egress_policy', arguments: {} });
      await transport.terminateSession();
      await client.close();
      const owner = real.listSessions()[0]!;
      expect(owner.owner).toBe('alice');
      expect(owner.state).toBe('destroyed');
    } finally {
      await gw.close();
    }
    expect([...touched].sort()).toEqual(['createSession', 'destroySession', 'editFile', 'exec', 'getSession', 'listFiles', 'readFile', 'writeFile']);
  });

  it('offers only sandbox tools: nothing that manages sessions, policy, credentials or the host', () => {
    expect([...TOOL_NAMES].sort()).toEqual(['edit_file', 'egress_policy', 'exec', 'list_files', 'read_file', 'write_file']);
  });
});
