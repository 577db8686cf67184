import { afterEach, describe, expect, it } from 'vitest';
import { EventBus } from '../common/events.js';
import { silentLogger } from '../common/logger.js';
import { Metrics } from '../common/metrics.js';
import { JwtSessions } from '../xds-server/sessions.js';
import { bumpRoutes } from '../xds-server/translate/bump.js';
import { sessionRouteTableConfig } from '../xds-server/translate/session-check.js';
import { Denylist } from './denylist.js';
import { KillSwitch, type ActionOptions } from './kill.js';
import { FakeSupervisor, MemoryAudit, recordingRevoker, tempDir } from './testkit.js';

const OP: ActionOptions = { actor: { id: 'operator:local', type: 'admin', name: 'alice' } };

async function setup(opts: { dataDir?: string } = {}) {
  const log: string[] = [];
  const edge = recordingRevoker(log);
  const sup = new FakeSupervisor(log);
  const audit = new MemoryAudit();
  audit.onAppend = (e) => log.push(`audit ${(e.api as { operation: string }).operation} ${e.status}`);
  const events = new EventBus();
  const denylist = await Denylist.open({ ...(opts.dataDir ? { dataDir: opts.dataDir } : {}), enforcers: [edge], logger: silentLogger() });
  const kill = new KillSwitch({ denylist, sandbox: sup, audit, events, metrics: new Metrics(), logger: silentLogger() });
  return { log, edge, sup, audit, events, denylist, kill };
}

describe('kill switch', () => {
  const dirs: (() => void)[] = [];
  afterEach(() => dirs.splice(0).forEach((c) => c()));

  it('audits the attempt, revokes at the edge, then tears the sandbox down, then audits the outcome', async () => {
    const { log, sup, kill, events } = await setup();
    sup.add('s1');
    const r = await kill.kill('s1', { ...OP, note: 'incident 42' });
    expect(log).toEqual(['audit session.kill Attempt', 'revoke s1 session_revoked', 'destroy s1 operator_kill', 'audit session.kill Success']);
    expect(r).toMatchObject({ sessionId: 's1', newlyDenied: true, sandbox: 'destroyed', deny: { kind: 'kill', reason: 'session_revoked', actor: 'operator:local', note: 'incident 42' } });
    expect(r.revokeMs).toBeLessThanOrEqual(r.totalMs);
    expect(sup.getSession('s1')!.state).toBe('destroyed');
    expect(events.history('session.killed')).toHaveLength(1);
    expect(kill.latencies()).toHaveLength(1);
  });

  it('returns only once the edge confirms the revocation is in force, and says so when it cannot', async () => {
    for (const confirms of [true, false]) {
      const log: string[] = [];
      let release!: (ok: boolean) => void;
      const edge = { revoke: (id: string) => log.push(`revoke ${id}`), enforced: () => new Promise<boolean>((r) => (release = r)) };
      const sup = new FakeSupervisor(log);
      sup.add('s1');
      const metrics = new Metrics();
      const denylist = await Denylist.open({ enforcers: [edge], logger: silentLogger() });
      const kill = new KillSwitch({ denylist, sandbox: sup, audit: new MemoryAudit(), events: new EventBus(), metrics, logger: silentLogger() });
      let done = false;
      const p = kill.kill('s1', OP).then((r) => ((done = true), r));
      await new Promise((r) => setTimeout(r, 20));
      // torn down already, but the edge has not confirmed: the call has not returned
      expect(sup.getSession('s1')!.state).toBe('destroyed');
      expect(done).toBe(false);
      release(confirms);
      expect((await p).edgeEnforced).toBe(confirms);
      expect(metrics.total('operator_edge_unconfirmed_total')).toBe(confirms ? 0 : 1);
    }
    // an enforcer that throws while confirming counts as not confirmed; the kill still completes
    const throwing = { revoke: () => undefined, enforced: (): Promise<boolean> => { throw new Error('edge down'); } };
    const denylist = await Denylist.open({ enforcers: [throwing], logger: silentLogger() });
    expect(await denylist.enforced()).toBe(false);
  });

  it('fails closed: when the attempt cannot be audited nothing is revoked and nothing torn down', async () => {
    const { log, sup, kill, audit, denylist } = await setup();
    sup.add('s1');
    audit.fail = true;
    await expect(kill.kill('s1', OP)).rejects.toMatchObject({ code: 'audit_write_failed' });
    await expect(kill.killAll(OP)).rejects.toMatchObject({ code: 'audit_write_failed' });
    await expect(kill.quarantine('s1', OP)).rejects.toMatchObject({ code: 'audit_write_failed' });
    await expect(kill.revoke('s1', OP)).rejects.toMatchObject({ code: 'audit_write_failed' });
    expect(log).toEqual([]);
    expect(denylist.has('s1')).toBe(false);
    expect(sup.getSession('s1')!.state).toBe('ready');
  });

  it('a protective kill (tripwire) revokes even when the audit log is down, with its own reason', async () => {
    const { log, sup, kill, audit, denylist } = await setup();
    sup.add('s1');
    audit.fail = true;
    const r = await kill.kill('s1', { actor: { id: 'tripwire', type: 'system' }, failClosed: false, denyReason: 'exfil_budget_exceeded' });
    expect(log).toEqual(['revoke s1 exfil_budget_exceeded', 'destroy s1 exfil_budget_exceeded']);
    expect(r.deny).toMatchObject({ kind: 'exfil', reason: 'exfil_budget_exceeded' });
    expect(denylist.get('s1')!.reason).toBe('exfil_budget_exceeded');
  });

  it('a failed teardown still leaves the session revoked, and is reported as a failure', async () => {
    const { log, sup, kill, audit } = await setup();
    sup.add('s1');
    sup.failDestroy = true;
    await expect(kill.kill('s1', OP)).rejects.toMatchObject({ code: 'sandbox_failed', details: { revoked: true } });
    expect(log.slice(0, 3)).toEqual(['audit session.kill Attempt', 'revoke s1 session_revoked', 'destroy s1 operator_kill']);
    expect(audit.events.at(-1)).toMatchObject({ status: 'Failure', status_detail: 'sandbox_failed' });
  });

  it('kill-all revokes every live session before the first teardown, and reaches sessions only the edge knows', async () => {
    const { log, sup, denylist, audit, events } = await setup();
    const kill = new KillSwitch({
      denylist,
      sandbox: sup,
      audit,
      events,
      metrics: new Metrics(),
      logger: silentLogger(),
      sessionSources: [() => ['edge-only']],
    });
    for (const id of ['a', 'b', 'c']) sup.add(id);
    sup.add('gone', 'destroyed');
    const r = await kill.killAll(OP);
    const firstDestroy = log.findIndex((l) => l.startsWith('destroy'));
    const revokes = log.filter((l) => l.startsWith('revoke'));
    expect(revokes.sort()).toEqual(['revoke a session_revoked', 'revoke b session_revoked', 'revoke c session_revoked', 'revoke edge-only session_revoked']);
    expect(log.slice(0, firstDestroy).filter((l) => l.startsWith('revoke'))).toHaveLength(4);
    expect(log.filter((l) => l.startsWith('destroy')).sort()).toEqual(['destroy a operator_kill_all', 'destroy b operator_kill_all', 'destroy c operator_kill_all']);
    expect(r.sessions.map((s) => s.sandbox).sort()).toEqual(['destroyed', 'destroyed', 'destroyed', 'not_found']);
    expect(log[0]).toBe('audit session.kill_all Attempt');
    expect(log.at(-1)).toBe('audit session.kill_all Success');
  });

  it('quarantine keeps the sandbox: the supervisor\'s own quarantine when it has one, else just the denylist', async () => {
    const { log, sup, kill } = await setup();
    sup.add('q1');
    expect(await kill.quarantine('q1', OP)).toMatchObject({ sandbox: 'quarantined' });
    expect(log).toEqual(['audit session.quarantine Attempt', 'revoke q1 session_revoked', 'quarantine q1', 'audit session.quarantine Success']);
    sup.withQuarantine = false;
    sup.add('q2');
    expect(await kill.quarantine('q2', OP)).toMatchObject({ sandbox: 'kept' });
    expect(sup.getSession('q2')!.state).toBe('ready');
    expect(log.filter((l) => l.startsWith('destroy'))).toEqual([]);
  });

  it('the denylist survives a restart and is re-applied to the enforcers', async () => {
    const t = tempDir();
    dirs.push(t.cleanup);
    const a = await setup({ dataDir: t.dir });
    a.sup.add('s1');
    await a.kill.kill('s1', OP);
    await a.kill.revoke('s2', { ...OP, denyReason: 'exfil_budget_exceeded' });
    await a.denylist.close();
    const log: string[] = [];
    const edge = recordingRevoker(log);
    const d = await Denylist.open({ dataDir: t.dir, enforcers: [edge], logger: silentLogger() });
    expect(d.list().map((e) => e.sessionId).sort()).toEqual(['s1', 's2']);
    expect([...edge.revoked.entries()].sort()).toEqual([
      ['s1', 'session_revoked'],
      ['s2', 'exfil_budget_exceeded'],
    ]);
    await d.close();
  });
});

describe('the edge answers a denylisted session at CONNECT and inside the tunnel', () => {
  it('tripwire kill → exfil_budget_exceeded; operator kill → session_revoked', async () => {
    const sessions = new JwtSessions({ jwks: () => ({ keys: [] }) });
    const denylist = await Denylist.open({ enforcers: [sessions], logger: silentLogger() });
    const kill = new KillSwitch({ denylist, audit: new MemoryAudit(), events: new EventBus(), metrics: new Metrics(), logger: silentLogger() });
    expect(sessions.denials()).toEqual([]);

    await kill.kill('x1', { actor: { id: 'tripwire', type: 'system' }, failClosed: false, denyReason: 'exfil_budget_exceeded' });
    await kill.kill('x2', OP);
    expect(sessions.denials()).toEqual([
      { sessionId: 'x1', reason: 'exfil_budget_exceeded' },
      { sessionId: 'x2', reason: 'session_revoked' },
    ]);
    // the next tunnel: the egress route table's DENY policy of that reason names the session
    const table = sessionRouteTableConfig(sessions.denials()) as Record<string, any>;
    const policies = table['envoy.filters.http.rbac'].rbac.rules.policies;
    const named = (reason: string) => policies[reason].principals[0].or_ids.ids.map((p: any) => p.header.string_match.exact);
    expect(table['envoy.filters.http.rbac'].rbac.rules.action).toBe('DENY');
    expect(named('exfil_budget_exceeded')).toEqual(['x1']);
    expect(named('session_revoked')).toEqual(['x2']);
    // inside a tunnel already open, Envoy refuses it by the deny route the session's denial becomes
    const routes = bumpRoutes('sink.test', ['sink.test:443'], sessions.denials()) as { virtual_hosts: Array<{ routes: Array<Record<string, any>> }> };
    const deny = routes.virtual_hosts[0]!.routes.find((r) => r.match.filter_state?.[0]?.string_match?.exact === 'x1');
    expect(deny?.direct_response?.status).toBe(403);
    expect(deny?.response_headers_to_add?.[0]?.header).toEqual({ key: 'x-deny-reason', value: 'exfil_budget_exceeded' });
  });
});

describe('after a kill, the session\'s MCP calls are refused', () => {
  it('through the gateway, on the in-memory SandboxService', async () => {
    const { McpGateway, CALLER_HEADER } = await import('../mcp/gateway.js');
    const { MemorySandbox, policyIr } = await import('../mcp/testkit.js');
    const { Client } = await import('@modelcontextprotocol/sdk/client/index.js');
    const { StreamableHTTPClientTransport } = await import('@modelcontextprotocol/sdk/client/streamableHttp.js');
    const sandbox = new MemorySandbox();
    const ir = policyIr('      - { callers: ["*"], tools: [exec], effect: allow }\n');
    const gw = await McpGateway.start({ sandbox, policy: () => ir, logger: silentLogger(), sessionIdleMs: 60_000 });
    const client = new Client({ name: 'test', version: '1.0.0' });
    const transport = new StreamableHTTPClientTransport(new URL(`http://${gw.address}/mcp`), { requestInit: { headers: { [CALLER_HEADER]: 'alice' } } });
    try {
      await client.connect(transport);
      const ok = await client.callTool({ name: 'exec', arguments: { command: ['echo', 'hi'] } });
      expect(ok.structuredContent).toMatchObject({ stdout: 'hi\n' });
      const sid = sandbox.listSessions()[0]!.sessionId;
      const denylist = await Denylist.open({ logger: silentLogger() });
      const kill = new KillSwitch({ denylist, sandbox, audit: new MemoryAudit(), events: new EventBus(), metrics: new Metrics(), logger: silentLogger() });
      expect(await kill.kill(sid, OP)).toMatchObject({ sandbox: 'destroyed' });
      const execsBefore = sandbox.calls.filter((c) => c.op === 'exec').length;
      const refused = await client.callTool({ name: 'exec', arguments: { command: ['echo', 'again'] } });
      expect(refused.structuredContent).toMatchObject({ error: { reason: expect.stringMatching(/^session_(expired|revoked)$/) } });
      expect(sandbox.calls.filter((c) => c.op === 'exec').length).toBe(execsBefore);
    } finally {
      await transport.terminateSession().catch(() => undefined);
      await client.close();
      await gw.close();
    }
  });
});
