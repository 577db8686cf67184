import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { OperatorClient, defaultSocketPath, type OperatorResponse } from '../operator/client.js';
import type { SessionView } from '../operator/api.js';
import type { DenyEntry } from '../operator/denylist.js';
import type { DeliveryStatus } from '../operator/soar-out.js';
import { EXIT, type CliIo } from './io.js';

export const OPERATOR_USAGE = `Usage:
  portcullis sessions list                 live sessions: sandbox state, denylist, egress in the tripwire window
  portcullis sessions show ID
  portcullis sessions kill ID [--note TEXT]        revoke at the edge, then tear the sandbox down
  portcullis sessions quarantine ID [--note TEXT]  cut egress, keep the sandbox for forensics
  portcullis kill-all --yes [--note TEXT]          every live session
  portcullis denylist [list]
  portcullis denylist add ID [--note TEXT]         revoke only (the sandbox is left alone)
  portcullis policy status                 live config version, last NACK, last refused reload
  portcullis soar deliveries [--limit N]   webhook delivery status
  portcullis soar jwks                     the JWKS webhook receivers verify with
  portcullis tripwire                      exfil tripwire budgets, usage, lost access-log entries
  portcullis ca rotate                     rotate the deployment CA

Options: --socket PATH (default $PORTCULLIS_OPERATOR_SOCKET, else $PORTCULLIS_DATA_DIR/operator.sock,
else ./data/operator.sock), or --url http://127.0.0.1:PORT --token-file FILE for the TCP listener;
--json for JSON output. Exit codes: 0 ok, 1 failure, 2 usage.`;

const COMMANDS = new Set(['sessions', 'kill-all', 'denylist', 'policy', 'soar', 'tripwire', 'ca']);

export function isOperatorCommand(cmd: string | undefined, rest: readonly string[]): boolean {
  if (cmd === 'policy') return rest[0] === 'status';
  return cmd !== undefined && COMMANDS.has(cmd);
}

class Usage extends Error {}

/** `portcullis <sessions|kill-all|denylist|policy status|soar|tripwire|ca> …`; returns the exit code. */
export async function runOperatorCli(argv: string[], io: CliIo, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let values: { socket?: string; url?: string; 'token-file'?: string; json?: boolean; note?: string; yes?: boolean; limit?: string; help?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      options: {
        socket: { type: 'string' },
        url: { type: 'string' },
        'token-file': { type: 'string' },
        json: { type: 'boolean', default: false },
        note: { type: 'string' },
        yes: { type: 'boolean', default: false },
        limit: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: true,
    }));
  } catch (e) {
    io.stderr.write(`${(e as Error).message}\n\n${OPERATOR_USAGE}\n`);
    return EXIT.usage;
  }
  if (values.help || positionals.length === 0) {
    io.stdout.write(`${OPERATOR_USAGE}\n`);
    return values.help ? EXIT.ok : EXIT.usage;
  }
  let token: string | undefined;
  if (values.url) {
    if (!values['token-file']) {
      io.stderr.write(`--url needs --token-file FILE (the operator credential)\n`);
      return EXIT.usage;
    }
    try {
      token = fs.readFileSync(values['token-file'], 'utf8').trim();
    } catch (e) {
      io.stderr.write(`cannot read ${values['token-file']}: ${(e as Error).message}\n`);
      return EXIT.failure;
    }
  }
  const client = new OperatorClient({
    ...(values.url ? { url: values.url, token: token! } : { socketPath: values.socket ?? defaultSocketPath(env) }),
    ...(env.USER ? { operator: env.USER } : {}),
  });
  const out = (s: string) => io.stdout.write(s.endsWith('\n') ? s : `${s}\n`);
  try {
    const [cmd, sub, arg] = positionals;
    const noteBody = values.note ? { note: values.note } : {};
    const call = async (method: string, path: string, body?: unknown): Promise<OperatorResponse<Record<string, unknown>>> => client.request(method, path, body);
    let r: OperatorResponse<Record<string, unknown>>;
    let render: (b: Record<string, unknown>) => string;
    const need = (n: number) => {
      if (positionals.length !== n) throw new Usage(`wrong number of arguments`);
    };
    switch (cmd) {
      case 'sessions':
        if (sub === 'list' || sub === undefined) {
          need(sub === undefined ? 1 : 2);
          r = await call('GET', '/v1/sessions');
          render = (b) => sessionsTable(b.sessions as SessionView[]);
        } else if (sub === 'show') {
          need(3);
          r = await call('GET', `/v1/sessions/${encodeURIComponent(arg!)}`);
          render = (b) => sessionDetail(b.session as SessionView);
        } else if (sub === 'kill') {
          need(3);
          r = await call('POST', `/v1/sessions/${encodeURIComponent(arg!)}/kill`, noteBody);
          render = (b) => {
            const x = b.result as { sessionId: string; sandbox: string; revokeMs: number; totalMs: number; newlyDenied: boolean; edgeEnforced: boolean };
            return `killed ${x.sessionId}: revoked at the edge in ${ms(x.revokeMs)}${x.newlyDenied ? '' : ' (already denied)'}, sandbox ${x.sandbox}, done in ${ms(x.totalMs)}${edgeNote(x.edgeEnforced)}`;
          };
        } else if (sub === 'quarantine') {
          need(3);
          r = await call('POST', `/v1/sessions/${encodeURIComponent(arg!)}/quarantine`, noteBody);
          render = (b) => {
            const x = b.result as { sessionId: string; sandbox: string; edgeEnforced: boolean };
            return `quarantined ${x.sessionId}: egress revoked, sandbox ${x.sandbox}${edgeNote(x.edgeEnforced)}`;
          };
        } else throw new Usage(`unknown sessions subcommand ${sub}`);
        break;
      case 'kill-all':
        need(1);
        if (!values.yes) throw new Usage('kill-all stops every session: confirm with --yes');
        r = await call('POST', '/v1/kill-all', noteBody);
        render = (b) => {
          const x = b.result as { sessions: unknown[]; revokeAllMs: number; totalMs: number; edgeEnforced: boolean };
          return `killed ${x.sessions.length} session(s): all revoked in ${ms(x.revokeAllMs)}, done in ${ms(x.totalMs)}${edgeNote(x.edgeEnforced)}`;
        };
        break;
      case 'denylist':
        if (sub === undefined || sub === 'list') {
          need(sub === undefined ? 1 : 2);
          r = await call('GET', '/v1/denylist');
          render = (b) => denyTable(b.denylist as DenyEntry[]);
        } else if (sub === 'add') {
          need(3);
          r = await call('POST', '/v1/denylist', { sessionId: arg, ...noteBody });
          render = (b) => {
            const x = b.result as { sessionId: string; newlyDenied: boolean };
            return `${x.sessionId} ${x.newlyDenied ? 'denied' : 'was already denied'}`;
          };
        } else throw new Usage(`unknown denylist subcommand ${sub}`);
        break;
      case 'policy':
        if (sub !== 'status') throw new Usage('expected: policy status');
        need(2);
        r = await call('GET', '/v1/policy/status');
        render = policyStatus;
        break;
      case 'soar':
        if (sub === 'deliveries') {
          need(2);
          r = await call('GET', `/v1/soar/deliveries${values.limit ? `?limit=${encodeURIComponent(values.limit)}` : ''}`);
          render = deliveries;
        } else if (sub === 'jwks') {
          need(2);
          r = await call('GET', '/v1/soar/jwks.json');
          render = (b) => JSON.stringify(b, null, 2);
        } else throw new Usage(`unknown soar subcommand ${sub ?? ''}`);
        break;
      case 'tripwire':
        need(1);
        r = await call('GET', '/v1/tripwire');
        render = tripwire;
        break;
      case 'ca':
        if (sub !== 'rotate') throw new Usage('expected: ca rotate');
        need(2);
        r = await call('POST', '/v1/ca/rotate', {});
        render = (b) => `CA rotated: ${JSON.stringify(b.result)}`;
        break;
      default:
        throw new Usage(`unknown command ${cmd}`);
    }
    if (r.status !== 200) {
      const e = (r.body as { error?: { code?: string; message?: string; details?: unknown } }).error;
      if (values.json) out(JSON.stringify(r.body));
      else io.stderr.write(`error: ${e?.code ?? `HTTP ${r.status}`}: ${e?.message ?? r.text.trim()}${e?.details ? ` ${JSON.stringify(e.details)}` : ''}\n`);
      return EXIT.failure;
    }
    out(values.json ? JSON.stringify(r.body) : render(r.body));
    return EXIT.ok;
  } catch (e) {
    if (e instanceof Usage) {
      io.stderr.write(`${e.message}\n\n${OPERATOR_USAGE}\n`);
      return EXIT.usage;
    }
    const code = (e as NodeJS.ErrnoException).code;
    const where = values.url ?? values.socket ?? defaultSocketPath(env);
    io.stderr.write(
      code === 'ENOENT' || code === 'ECONNREFUSED'
        ? `cannot reach the operator API at ${where} (is \`portcullis up\` running?)\n`
        : code === 'EACCES'
          ? `permission denied on ${where} (the operator socket is 0600: run as its owner)\n`
          : `operator API request failed: ${(e as Error).message}\n`,
    );
    return EXIT.failure;
  } finally {
    client.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Human output

/** An edge that did not confirm the deny routes is worth a line: open tunnels end with the teardown. */
function edgeNote(enforced: boolean | undefined): string {
  return enforced === false ? '\n  warning: Envoy did not confirm the deny routes within 2 s (new tunnels are refused; see operator_edge_unconfirmed_total)' : '';
}

function ms(v: number): string {
  return v < 1 ? `${(v * 1000).toFixed(0)} µs` : v < 1000 ? `${v.toFixed(1)} ms` : `${(v / 1000).toFixed(2)} s`;
}

function bytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${u[i]}`;
}

function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(w[i]!))).join('  ');
  return [line(head), ...rows.map(line)].join('\n');
}

function sessionsTable(s: SessionView[]): string {
  if (!s.length) return 'no sessions';
  return table(
    ['SESSION', 'STATE', 'OWNER', 'DENIED', 'EGRESS (window)'],
    s.map((x) => [
      x.sessionId,
      x.state,
      x.sandbox?.owner ?? '-',
      x.denied ? `${x.denied.kind} (${x.denied.reason})` : '-',
      x.egress ? `${bytes(x.egress.bytes)}, ${x.egress.destinations} dest${x.egress.tripped ? ', TRIPPED' : ''}` : '-',
    ]),
  );
}

function sessionDetail(s: SessionView): string {
  const lines = [`session   ${s.sessionId}`, `state     ${s.state}`];
  if (s.sandbox) lines.push(`owner     ${s.sandbox.owner}`, `created   ${s.sandbox.createdAt}`, `expires   ${s.sandbox.expiresAt}`, `runtime   ${s.sandbox.runtime}`);
  lines.push(`denied    ${s.denied ? `${s.denied.kind} by ${s.denied.actor} at ${new Date(s.denied.at).toISOString()} (${s.denied.reason})${s.denied.note ? `: ${s.denied.note}` : ''}` : 'no'}`);
  lines.push(`egress    ${s.egress ? `${bytes(s.egress.bytes)} to ${s.egress.destinations} destination(s) in the window${s.egress.tripped ? ' — tripwire TRIPPED' : ''}` : 'none in the window'}`);
  return lines.join('\n');
}

function denyTable(d: DenyEntry[]): string {
  if (!d.length) return 'the denylist is empty';
  return table(
    ['SESSION', 'KIND', 'REASON', 'BY', 'AT', 'NOTE'],
    d.map((x) => [x.sessionId, x.kind, x.reason, x.actor, new Date(x.at).toISOString(), x.note ?? '']),
  );
}

function policyStatus(b: Record<string, unknown>): string {
  const nack = b.lastNack as { at?: string; typeUrl?: string; errorDetail?: string; node?: string } | null;
  const refused = b.lastRefused as { at?: string; code?: string; message?: string } | null;
  const reload = b.lastReloadRefused as { at?: string; source?: string; data?: { code?: string; message?: string } } | null;
  return [
    `live version          ${String(b.liveVersion ?? '(none)')}`,
    `last NACK             ${nack ? `${nack.at ?? ''} ${nack.typeUrl ?? ''} ${nack.errorDetail ?? ''}`.trim() : 'none'}`,
    `last refused apply    ${refused ? `${refused.at} ${refused.code}: ${refused.message}` : 'none'}`,
    `last refused reload   ${reload ? `${reload.at} (${reload.source}) ${reload.data?.code ?? ''} ${reload.data?.message ?? ''}`.trim() : 'none'}`,
  ].join('\n');
}

function deliveries(b: Record<string, unknown>): string {
  const targets = b.targets as { url: string; kid: string | null; pending: number; delivered: number; dead: number; consecutiveFailures: number; nextAttemptAt: number | null; lastError: string | null }[];
  const items = b.items as DeliveryStatus[];
  if (!targets.length) return 'no webhooks configured (soar.webhooks in the policy)';
  const head = table(
    ['WEBHOOK', 'PENDING', 'DELIVERED', 'DEAD', 'FAILING'],
    targets.map((t) => [
      t.url,
      String(t.pending),
      String(t.delivered),
      String(t.dead),
      t.consecutiveFailures ? `${t.consecutiveFailures}× (${t.lastError ?? ''}), next ${t.nextAttemptAt ? new Date(t.nextAttemptAt).toISOString() : '-'}` : '-',
    ]),
  );
  const recent = items.slice(-20);
  if (!recent.length) return head;
  return `${head}\n\n${table(
    ['SEQ', 'TYPE', 'SESSION', 'STATE', 'ATTEMPTS', 'LAST'],
    recent.map((i) => [String(i.seq), i.type, i.sessionId ?? '-', i.state, String(i.attempts), i.lastError ?? (i.lastStatus ? `HTTP ${i.lastStatus}` : '-')]),
  )}`;
}

function tripwire(b: Record<string, unknown>): string {
  const c = b.config as { bytesPerSession: number; distinctDestinations: number; windowSeconds: number; onTrip: string };
  const lost = b.lost as { streams: number; envoyDropped: number; unattributedBytes: number };
  const sessions = (b.sessions as { sessionId: string; bytes: number; destinations: number; tripped: boolean }[]).filter((s) => s.bytes || s.destinations || s.tripped);
  const lines = [
    `budget     ${bytes(c.bytesPerSession)} and ${c.distinctDestinations} destinations per session per ${c.windowSeconds} s; on trip: ${c.onTrip}`,
    `lost       ${lost.streams} stream(s) without a final access-log entry, ${lost.envoyDropped} entries dropped by Envoy, ${bytes(lost.unattributedBytes)} without a session`,
  ];
  if (sessions.length) lines.push('', table(['SESSION', 'BYTES', 'DESTINATIONS', 'TRIPPED'], sessions.map((s) => [s.sessionId, bytes(s.bytes), String(s.destinations), s.tripped ? 'yes' : 'no'])));
  return lines.join('\n');
}
