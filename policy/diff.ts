import { formatHostPort } from './hosts.js';
import { cmp, toolRuleKey, type Ir, type IrCredential, type IrRung, type IrToolRule } from './ir.js';
import { formatDuration, formatSize } from './units.js';

/**
 * The change in effective permissions between two IRs, for pull-request review. Egress is compared
 * per (host pattern, port) after the default rung is applied: with `defaultRung: deny-all` nothing is
 * reachable, so every destination counts as denied.
 */

export interface EgressEntry {
  host: string;
  port: number;
  rung: IrRung;
  credential: string | null;
}

export interface FieldChange {
  field: string;
  from: unknown;
  to: unknown;
}

export interface ToolRuleSummary {
  effect: 'allow' | 'deny';
  callers: string[];
  tools: string[];
  arguments: IrToolRule['arguments'];
  source: IrToolRule['source'];
}

export interface PolicyDiff {
  egress: {
    defaultRung: FieldChange | null;
    /** newly reachable destinations */
    gained: EgressEntry[];
    /** no longer reachable (removed, or now at deny-all) */
    lost: EgressEntry[];
    /** still reachable, different rung */
    rungChanged: { host: string; port: number; from: IrRung; to: IrRung }[];
    /** still reachable, different injected credential */
    credentialChanged: { host: string; port: number; from: string | null; to: string | null }[];
    /** explicit `rung: deny-all` rules added (narrowing) or removed (widening) */
    explicitDenyAdded: { host: string; port: number }[];
    explicitDenyRemoved: { host: string; port: number }[];
    /** credential definitions (header, format, source) that changed, by name */
    credentials: { name: string; from: IrCredential | null; to: IrCredential | null }[];
    other: FieldChange[];
  };
  storage: { gained: { host: string; port: number }[]; lost: { host: string; port: number }[] };
  tools: { added: ToolRuleSummary[]; removed: ToolRuleSummary[] };
  sessions: FieldChange[];
  mcp: FieldChange[];
  deployment: FieldChange[];
  other: FieldChange[];
}

function egressMap(ir: Ir): Map<string, EgressEntry> {
  const m = new Map<string, EgressEntry>();
  const denyAll = ir.egress.defaultRung === 'deny-all';
  for (const d of ir.egress.destinations) {
    for (const port of d.ports) {
      m.set(formatHostPort(d.host, port), {
        host: d.host,
        port,
        rung: denyAll ? 'deny-all' : d.rung,
        credential: denyAll || d.rung === 'deny-all' ? null : (d.credential?.name ?? null),
      });
    }
  }
  return m;
}

function byKey<T>(m: Map<string, T>): string[] {
  return [...m.keys()].sort(cmp);
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function fields(out: FieldChange[], prefix: string, a: Record<string, unknown>, b: Record<string, unknown>): void {
  for (const k of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort(cmp)) {
    if (!same(a[k], b[k])) out.push({ field: prefix ? `${prefix}.${k}` : k, from: a[k] ?? null, to: b[k] ?? null });
  }
}

function summary(r: IrToolRule): ToolRuleSummary {
  return { effect: r.effect, callers: r.callers, tools: r.tools, arguments: r.arguments, source: r.source };
}

export function diffIr(oldIr: Ir, newIr: Ir): PolicyDiff {
  const d: PolicyDiff = {
    egress: { defaultRung: null, gained: [], lost: [], rungChanged: [], credentialChanged: [], explicitDenyAdded: [], explicitDenyRemoved: [], credentials: [], other: [] },
    storage: { gained: [], lost: [] },
    tools: { added: [], removed: [] },
    sessions: [],
    mcp: [],
    deployment: [],
    other: [],
  };
  if (oldIr.egress.defaultRung !== newIr.egress.defaultRung) d.egress.defaultRung = { field: 'egress.rung', from: oldIr.egress.defaultRung, to: newIr.egress.defaultRung };

  const a = egressMap(oldIr);
  const b = egressMap(newIr);
  for (const k of [...new Set([...byKey(a), ...byKey(b)])].sort(cmp)) {
    const o = a.get(k);
    const n = b.get(k);
    const oAllowed = o !== undefined && o.rung !== 'deny-all';
    const nAllowed = n !== undefined && n.rung !== 'deny-all';
    const where = { host: (n ?? o)!.host, port: (n ?? o)!.port };
    if (!oAllowed && nAllowed) d.egress.gained.push(n);
    else if (oAllowed && !nAllowed) d.egress.lost.push(o);
    else if (oAllowed && nAllowed) {
      if (o.rung !== n.rung) d.egress.rungChanged.push({ ...where, from: o.rung, to: n.rung });
      if (o.credential !== n.credential) d.egress.credentialChanged.push({ ...where, from: o.credential, to: n.credential });
    }
    const oExplicit = oldIr.egress.defaultRung !== 'deny-all' && o?.rung === 'deny-all';
    const nExplicit = newIr.egress.defaultRung !== 'deny-all' && n?.rung === 'deny-all';
    if (!oExplicit && nExplicit) d.egress.explicitDenyAdded.push(where);
    if (oExplicit && !nExplicit) d.egress.explicitDenyRemoved.push(where);
  }

  const creds = (ir: Ir) => {
    const m = new Map<string, IrCredential>();
    for (const x of ir.egress.destinations) if (x.credential) m.set(x.credential.name, x.credential);
    return m;
  };
  const ca = creds(oldIr);
  const cb = creds(newIr);
  for (const name of [...new Set([...ca.keys(), ...cb.keys()])].sort(cmp)) {
    const o = ca.get(name) ?? null;
    const n = cb.get(name) ?? null;
    if (o && n && !same(o, n)) d.egress.credentials.push({ name, from: o, to: n });
  }
  if (!same(oldIr.egress.upstreamTrust, newIr.egress.upstreamTrust)) d.egress.other.push({ field: 'egress.upstreamTrust', from: oldIr.egress.upstreamTrust, to: newIr.egress.upstreamTrust });
  fields(d.egress.other, 'egress.tripwire', oldIr.egress.tripwire, newIr.egress.tripwire);
  const sds = (ir: Ir) => Object.fromEntries(ir.egress.sdsServers.map((s) => [s.name, s]));
  fields(d.egress.other, 'egress.sdsServers', sds(oldIr), sds(newIr));

  const storage = (ir: Ir) => new Map(ir.storage.backends.flatMap((x) => x.ports.map((port) => [formatHostPort(x.host, port), { host: x.host, port }] as const)));
  const sa = storage(oldIr);
  const sb = storage(newIr);
  for (const k of byKey(sb)) if (!sa.has(k)) d.storage.gained.push(sb.get(k)!);
  for (const k of byKey(sa)) if (!sb.has(k)) d.storage.lost.push(sa.get(k)!);

  const rules = (ir: Ir) => new Map(ir.mcp.tools.rules.map((r) => [toolRuleKey(r), r]));
  const ra = rules(oldIr);
  const rb = rules(newIr);
  for (const k of byKey(rb)) if (!ra.has(k)) d.tools.added.push(summary(rb.get(k)!));
  for (const k of byKey(ra)) if (!rb.has(k)) d.tools.removed.push(summary(ra.get(k)!));

  fields(d.sessions, 'sessions', oldIr.sessions, newIr.sessions);
  if (!same(oldIr.mcp.listen, newIr.mcp.listen)) d.mcp.push({ field: 'mcp.listen', from: oldIr.mcp.listen, to: newIr.mcp.listen });
  if (!same(oldIr.mcp.auth, newIr.mcp.auth)) d.mcp.push({ field: 'mcp.auth', from: oldIr.mcp.auth, to: newIr.mcp.auth });
  fields(d.mcp, 'mcp.limits', oldIr.mcp.limits, newIr.mcp.limits);
  fields(d.deployment, 'deployment', oldIr.deployment, newIr.deployment);
  if (!same(oldIr.soar.webhooks, newIr.soar.webhooks)) d.other.push({ field: 'soar.webhooks', from: oldIr.soar.webhooks, to: newIr.soar.webhooks });
  const adminView = (a: Ir['soar']['admin']) => (a ? { audience: a.audience, keys: a.keys.map((k) => ({ name: k.name, jwksFile: k.jwksFile })) } : null);
  if (!same(adminView(oldIr.soar.admin), adminView(newIr.soar.admin))) d.other.push({ field: 'soar.admin', from: adminView(oldIr.soar.admin), to: adminView(newIr.soar.admin) });
  if (!same(oldIr.audit, newIr.audit)) d.other.push({ field: 'audit.file', from: oldIr.audit.file, to: newIr.audit.file });
  return d;
}

export function isEmptyDiff(d: PolicyDiff): boolean {
  const e = d.egress;
  return (
    e.defaultRung === null &&
    [e.gained, e.lost, e.rungChanged, e.credentialChanged, e.explicitDenyAdded, e.explicitDenyRemoved, e.credentials, e.other].every((x) => x.length === 0) &&
    d.storage.gained.length === 0 &&
    d.storage.lost.length === 0 &&
    d.tools.added.length === 0 &&
    d.tools.removed.length === 0 &&
    [d.sessions, d.mcp, d.deployment, d.other].every((x) => x.length === 0)
  );
}

function show(field: string, v: unknown): string {
  if (v === null || v === undefined) return 'none';
  if (typeof v === 'number') {
    if (/Seconds$/.test(field)) return formatDuration(v);
    if (/Bytes|bytesPerSession/.test(field)) return formatSize(v);
    return String(v);
  }
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null) {
    const o = v as Record<string, unknown>;
    if ('host' in o && 'port' in o && Object.keys(o).length === 2) return formatHostPort(String(o.host), Number(o.port));
    if (o.kind === 'system') return 'system';
    if (o.kind === 'file' && typeof o.path === 'string') return `file ${o.path}`;
    if (o.mode === 'local') return 'local';
    if (o.mode === 'oidc') return `oidc (issuer ${String(o.issuer)}, audiences ${(o.audiences as string[]).join(', ')}, claim ${String(o.callerClaim)})`;
  }
  return JSON.stringify(v);
}

function credText(c: IrCredential): string {
  const src = c.source.kind === 'file' ? `file ${c.source.path}` : `sds ${c.source.server}/${c.source.name}`;
  return `header ${c.header}, format "${c.format}", ${src}`;
}

function ruleText(r: ToolRuleSummary): string {
  const args = r.arguments.map((a) => `${a.name} ${a.op} ${JSON.stringify(a.value)}`).join(' and ');
  return `${r.effect} tools [${r.tools.join(', ')}] for callers [${r.callers.join(', ')}]${args ? ` when ${args}` : ''}  (${r.source.file}:${r.source.line})`;
}

/** Human-readable diff, one line per change, suited to a pull-request comment. */
export function formatDiff(d: PolicyDiff): string {
  if (isEmptyDiff(d)) return 'No change in effective permissions.\n';
  const out: string[] = [];
  const section = (title: string, lines: string[]) => {
    if (lines.length === 0) return;
    out.push(title, ...lines.map((l) => `  ${l}`), '');
  };
  const e = d.egress;
  const egress: string[] = [];
  if (e.defaultRung) egress.push(`~ default rung ${show('', e.defaultRung.from)} → ${show('', e.defaultRung.to)}`);
  for (const g of e.gained) egress.push(`+ ${formatHostPort(g.host, g.port)}  ${g.rung}${g.credential ? `, credential ${g.credential}` : ''}`);
  for (const l of e.lost) egress.push(`- ${formatHostPort(l.host, l.port)}  (was ${l.rung}${l.credential ? `, credential ${l.credential}` : ''})`);
  for (const c of e.rungChanged) egress.push(`~ ${formatHostPort(c.host, c.port)}  rung ${c.from} → ${c.to}`);
  for (const c of e.credentialChanged) egress.push(`~ ${formatHostPort(c.host, c.port)}  credential ${c.from ?? 'none'} → ${c.to ?? 'none'}`);
  for (const x of e.explicitDenyAdded) egress.push(`+ deny ${formatHostPort(x.host, x.port)}  (explicit deny-all rule added)`);
  for (const x of e.explicitDenyRemoved) egress.push(`- deny ${formatHostPort(x.host, x.port)}  (explicit deny-all rule removed)`);
  for (const c of e.credentials) egress.push(`~ credential ${c.name}: ${c.from ? credText(c.from) : 'none'} → ${c.to ? credText(c.to) : 'none'}`);
  for (const c of e.other) egress.push(`~ ${c.field} ${show(c.field, c.from)} → ${show(c.field, c.to)}`);
  section('Egress', egress);
  section('Storage lane', [
    ...d.storage.gained.map((g) => `+ ${formatHostPort(g.host, g.port)}`),
    ...d.storage.lost.map((l) => `- ${formatHostPort(l.host, l.port)}`),
  ]);
  section('Tool permissions', [...d.tools.added.map((r) => `+ ${ruleText(r)}`), ...d.tools.removed.map((r) => `- ${ruleText(r)}`)]);
  const fieldLines = (xs: FieldChange[]) => xs.map((c) => `~ ${c.field} ${show(c.field, c.from)} → ${show(c.field, c.to)}`);
  section('Session bounds', fieldLines(d.sessions));
  section('MCP ingress', fieldLines(d.mcp));
  section('Deployment', fieldLines(d.deployment));
  section('Other', fieldLines(d.other));
  return `${out.join('\n').trimEnd()}\n`;
}
