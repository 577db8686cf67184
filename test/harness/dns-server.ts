/**
 * A minimal authoritative DNS server for tests (UDP only, A and AAAA), as a module and as a script.
 *
 * Zone: `{ "api.example.test": { A: ["198.51.100.10"] }, "*.w.example.test": { AAAA: ["2001:db8::1"] } }`.
 * Names are case-insensitive, without the trailing dot; `*.x` matches one or more labels below x.
 * A name not in the zone gets NXDOMAIN; a known name without records of the asked type gets an empty
 * NOERROR answer; every answer is authoritative (AA) with the spec's `ttl` (default 0).
 *
 * Rebinding: `sequence: { A: [["198.51.100.10"], ["127.0.0.1"]] }` answers the n-th A query for that
 * name with the n-th list (the last one repeats; `cycle: true` starts over). `set` resets the count.
 *
 * In process:   const dns = await createDnsServer({ zone, port: 0, host: '127.0.0.1' });
 * In a netns:   const dns = await startDnsServerIn({ netns, zone });   // port 53 on all addresses
 *   (runs `node --import tsx test/harness/dns-server.ts --port 53 --zone '<json>'`; stdin takes JSON
 *   lines {"set":{name:spec}}, {"delete":name}, {"zone":{…}} and answers {"event":"updated"};
 *   stdout has {"event":"query",…} per query.)
 *
 * Not handled: TCP, EDNS (OPT records are ignored, answers carry none), compression in queries,
 * record types other than A/AAAA. Hand-rolled rather than a dependency: the wire format needed is a
 * few dozen lines (dns-packet on npm would be the library to take if this grows).
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { pathToFileURL } from 'node:url';
import { startJsonLinesProcess, type JsonLinesProcess, type JsonLineEvent } from './upstream.js';

export interface DnsAnswerSpec {
  A?: string[];
  AAAA?: string[];
  /** TTL in seconds for every answer of this name (default 0). */
  ttl?: number;
  /** Per-query answers, overriding A/AAAA for the types given (see the module comment). */
  sequence?: { A?: string[][]; AAAA?: string[][]; cycle?: boolean };
}
export type DnsZone = Record<string, DnsAnswerSpec>;

export interface DnsQueryLog {
  name: string;
  type: string;
  from: string;
  rcode: 'NOERROR' | 'NXDOMAIN' | 'FORMERR' | 'NOTIMP';
  answers: string[];
}

export const TYPE_A = 1;
export const TYPE_AAAA = 28;
const TYPE_NAMES: Record<number, string> = { 1: 'A', 28: 'AAAA', 5: 'CNAME', 15: 'MX', 16: 'TXT', 33: 'SRV', 65: 'HTTPS', 255: 'ANY' };
const RCODE = { NOERROR: 0, FORMERR: 1, NXDOMAIN: 3, NOTIMP: 4 } as const;

// ---------------------------------------------------------------------------------------------
// wire format
// ---------------------------------------------------------------------------------------------

export function ipv4Bytes(ip: string): Buffer {
  if (!net.isIPv4(ip)) throw new Error(`not an IPv4 address: ${ip}`);
  return Buffer.from(ip.split('.').map(Number));
}

export function ipv6Bytes(ip: string): Buffer {
  if (!net.isIPv6(ip)) throw new Error(`not an IPv6 address: ${ip}`);
  let s = ip;
  let tail: number[] = [];
  const dotted = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(s); // e.g. ::ffff:127.0.0.1, 64:ff9b::10.0.0.1
  if (dotted?.[1] && dotted[2]) {
    const b = ipv4Bytes(dotted[2]);
    tail = [(b[0]! << 8) | b[1]!, (b[2]! << 8) | b[3]!];
    s = dotted[1].endsWith('::') ? dotted[1] : dotted[1].slice(0, -1);
  }
  const parse = (x: string): number[] => (x === '' ? [] : x.split(':').map((h) => parseInt(h, 16)));
  const halves = s.split('::');
  let groups: number[];
  if (halves.length === 2) {
    const hi = parse(halves[0]!);
    const lo = [...parse(halves[1]!), ...tail];
    groups = [...hi, ...new Array<number>(8 - hi.length - lo.length).fill(0), ...lo];
  } else {
    groups = [...parse(s), ...tail];
  }
  if (groups.length !== 8) throw new Error(`cannot parse IPv6 address ${ip}`);
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}

interface ParsedQuery {
  id: number;
  flags: number;
  name: string;
  qtype: number;
  /** Byte offset just past the question (QNAME, QTYPE, QCLASS). */
  qEnd: number;
}

/** Parses the single question of a query; returns an rcode instead when it cannot. */
export function parseQuery(msg: Buffer): ParsedQuery | { id: number; flags: number; rcode: number } | undefined {
  if (msg.length < 12) return undefined; // not even a header: drop
  const id = msg.readUInt16BE(0);
  const flags = msg.readUInt16BE(2);
  if (flags & 0x8000) return undefined; // a response: drop
  const opcode = (flags >> 11) & 0xf;
  if (opcode !== 0) return { id, flags, rcode: RCODE.NOTIMP };
  if (msg.readUInt16BE(4) !== 1) return { id, flags, rcode: RCODE.FORMERR };
  const labels: string[] = [];
  let off = 12;
  for (;;) {
    if (off >= msg.length) return { id, flags, rcode: RCODE.FORMERR };
    const len = msg[off]!;
    off += 1;
    if (len === 0) break;
    if (len & 0xc0 || off + len > msg.length) return { id, flags, rcode: RCODE.FORMERR };
    labels.push(msg.subarray(off, off + len).toString('latin1'));
    off += len;
  }
  if (off + 4 > msg.length) return { id, flags, rcode: RCODE.FORMERR };
  return { id, flags, name: labels.join('.').toLowerCase(), qtype: msg.readUInt16BE(off), qEnd: off + 4 };
}

export function buildResponse(query: Buffer, q: { id: number; flags: number; qEnd?: number }, rcode: number, answers: Array<{ type: number; ttl: number; rdata: Buffer }>): Buffer {
  const header = Buffer.alloc(12);
  header.writeUInt16BE(q.id, 0);
  // QR, opcode from the query, AA, RD from the query, RA clear.
  header.writeUInt16BE(0x8000 | (q.flags & 0x7800) | 0x0400 | (q.flags & 0x0100) | rcode, 2);
  const hasQuestion = q.qEnd !== undefined;
  header.writeUInt16BE(hasQuestion ? 1 : 0, 4);
  header.writeUInt16BE(answers.length, 6);
  const parts: Buffer[] = [header];
  if (hasQuestion) parts.push(query.subarray(12, q.qEnd));
  for (const a of answers) {
    const rr = Buffer.alloc(12);
    rr.writeUInt16BE(0xc00c, 0); // pointer to the question name
    rr.writeUInt16BE(a.type, 2);
    rr.writeUInt16BE(1, 4); // IN
    rr.writeUInt32BE(a.ttl >>> 0, 6);
    rr.writeUInt16BE(a.rdata.length, 10);
    parts.push(rr, a.rdata);
  }
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------------------------------------
// zone lookup
// ---------------------------------------------------------------------------------------------

function normName(n: string): string {
  return n.toLowerCase().replace(/\.$/, '');
}

function validateSpec(name: string, spec: DnsAnswerSpec): void {
  for (const a of spec.A ?? []) ipv4Bytes(a);
  for (const a of spec.AAAA ?? []) ipv6Bytes(a);
  for (const l of spec.sequence?.A ?? []) for (const a of l) ipv4Bytes(a);
  for (const l of spec.sequence?.AAAA ?? []) for (const a of l) ipv6Bytes(a);
  if (spec.ttl !== undefined && (!Number.isInteger(spec.ttl) || spec.ttl < 0)) throw new Error(`${name}: bad ttl`);
}

export class DnsZoneState {
  private zone = new Map<string, DnsAnswerSpec>();
  private counts = new Map<string, number>();

  constructor(zone: DnsZone = {}) {
    this.replace(zone);
  }

  replace(zone: DnsZone): void {
    for (const [n, s] of Object.entries(zone)) validateSpec(n, s);
    this.zone = new Map(Object.entries(zone).map(([n, s]) => [normName(n), s]));
    this.counts.clear();
  }

  set(name: string, spec: DnsAnswerSpec): void {
    validateSpec(name, spec);
    const n = normName(name);
    this.zone.set(n, spec);
    for (const k of [...this.counts.keys()]) if (k.startsWith(`${n}|`)) this.counts.delete(k);
  }

  delete(name: string): void {
    this.zone.delete(normName(name));
  }

  private find(name: string): [string, DnsAnswerSpec] | undefined {
    const exact = this.zone.get(name);
    if (exact) return [name, exact];
    const labels = name.split('.');
    for (let i = 1; i < labels.length; i++) {
      const key = `*.${labels.slice(i).join('.')}`;
      const w = this.zone.get(key);
      if (w) return [key, w];
    }
    return undefined;
  }

  /** Answers for (name, qtype); undefined = NXDOMAIN. Advances the name's sequence counter. */
  answer(name: string, qtype: number): { ttl: number; addrs: string[] } | undefined {
    const hit = this.find(normName(name));
    if (!hit) return undefined;
    const [key, spec] = hit;
    const t = qtype === TYPE_A ? 'A' : qtype === TYPE_AAAA ? 'AAAA' : undefined;
    if (!t) return { ttl: spec.ttl ?? 0, addrs: [] };
    const seq = spec.sequence?.[t];
    if (seq && seq.length > 0) {
      const ck = `${key}|${t}`;
      const n = this.counts.get(ck) ?? 0;
      this.counts.set(ck, n + 1);
      const idx = spec.sequence?.cycle ? n % seq.length : Math.min(n, seq.length - 1);
      return { ttl: spec.ttl ?? 0, addrs: seq[idx] ?? [] };
    }
    return { ttl: spec.ttl ?? 0, addrs: spec[t] ?? [] };
  }
}

/** Handles one query datagram; returns the response (or undefined to drop) and the log entry. */
export function handleQuery(state: DnsZoneState, msg: Buffer, from: string): { response?: Buffer; log?: DnsQueryLog } {
  const q = parseQuery(msg);
  if (!q) return {};
  if ('rcode' in q) {
    const rcode = q.rcode === RCODE.NOTIMP ? 'NOTIMP' : 'FORMERR';
    return { response: buildResponse(msg, q, q.rcode, []), log: { name: '', type: '', from, rcode, answers: [] } };
  }
  const type = TYPE_NAMES[q.qtype] ?? String(q.qtype);
  const ans = state.answer(q.name, q.qtype);
  if (!ans) {
    return { response: buildResponse(msg, q, RCODE.NXDOMAIN, []), log: { name: q.name, type, from, rcode: 'NXDOMAIN', answers: [] } };
  }
  const rrs = ans.addrs.map((a) => ({ type: q.qtype, ttl: ans.ttl, rdata: q.qtype === TYPE_A ? ipv4Bytes(a) : ipv6Bytes(a) }));
  return { response: buildResponse(msg, q, RCODE.NOERROR, rrs), log: { name: q.name, type, from, rcode: 'NOERROR', answers: ans.addrs } };
}

// ---------------------------------------------------------------------------------------------
// server
// ---------------------------------------------------------------------------------------------

export interface DnsServer {
  readonly address: string;
  readonly port: number;
  readonly queries: readonly DnsQueryLog[];
  set(name: string, spec: DnsAnswerSpec): void;
  delete(name: string): void;
  replace(zone: DnsZone): void;
  close(): Promise<void>;
}

/** Starts the server in this process. `host` default 127.0.0.1, `port` 0 = any. */
export function createDnsServer(opts: { zone?: DnsZone; port?: number; host?: string; onQuery?: (q: DnsQueryLog) => void }): Promise<DnsServer> {
  const state = new DnsZoneState(opts.zone ?? {});
  const host = opts.host ?? '127.0.0.1';
  const sock = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
  const queries: DnsQueryLog[] = [];
  sock.on('message', (msg, rinfo) => {
    let r: ReturnType<typeof handleQuery>;
    try {
      r = handleQuery(state, msg, `${rinfo.address}:${rinfo.port}`);
    } catch {
      return;
    }
    if (r.log) {
      queries.push(r.log);
      opts.onQuery?.(r.log);
    }
    if (r.response) sock.send(r.response, rinfo.port, rinfo.address);
  });
  return new Promise((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(opts.port ?? 0, host, () => {
      sock.off('error', reject);
      const a = sock.address();
      resolve({
        address: a.address,
        port: a.port,
        queries,
        set: (n, s) => state.set(n, s),
        delete: (n) => state.delete(n),
        replace: (z) => state.replace(z),
        close: () => new Promise<void>((r) => sock.close(() => r())),
      });
    });
  });
}

export interface DnsServerProcess extends JsonLinesProcess {
  readonly port: number;
  /** Changes take effect before the promise resolves. */
  set(name: string, spec: DnsAnswerSpec): Promise<void>;
  delete(name: string): Promise<void>;
  replace(zone: DnsZone): Promise<void>;
  queries(): DnsQueryLog[];
}

/** Runs the server as its own process, in `netns` when given (default: port 53 on 0.0.0.0). */
export async function startDnsServerIn(opts: { netns?: string; zone?: DnsZone; port?: number; host?: string }): Promise<DnsServerProcess> {
  const p = await startJsonLinesProcess({
    ...(opts.netns !== undefined ? { netns: opts.netns } : {}),
    script: 'test/harness/dns-server.ts',
    args: ['--port', String(opts.port ?? 53), '--host', opts.host ?? '0.0.0.0', '--zone', JSON.stringify(opts.zone ?? {})],
    label: 'dns-server',
  });
  let seq = 0;
  const command = async (cmd: Record<string, unknown>): Promise<void> => {
    const id = ++seq;
    p.send({ ...cmd, id });
    const ev = await p.waitFor((e) => (e.event === 'updated' || e.event === 'commandError') && e.id === id);
    if (ev.event === 'commandError') throw new Error(`dns-server: ${String(ev.message)}`);
  };
  const listening = p.events.find((e) => e.event === 'listening');
  return {
    ...p,
    port: Number(listening?.port),
    set: (name, spec) => command({ set: { [name]: spec } }),
    delete: (name) => command({ delete: name }),
    replace: (zone) => command({ zone }),
    queries: () => p.events.filter((e: JsonLineEvent) => e.event === 'query') as unknown as DnsQueryLog[],
  };
}

// ---------------------------------------------------------------------------------------------
// script entry
// ---------------------------------------------------------------------------------------------

async function cli(argv: readonly string[]): Promise<void> {
  let port = 53;
  let host = '0.0.0.0';
  let zone: DnsZone = {};
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--port': port = Number(v); i++; break;
      case '--host': host = String(v); i++; break;
      case '--zone': zone = JSON.parse(String(v)) as DnsZone; i++; break;
      default: throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  const emit = (o: Record<string, unknown>): void => {
    process.stdout.write(JSON.stringify({ ts: Date.now(), ...o }) + '\n');
  };
  const server = await createDnsServer({ zone, port, host, onQuery: (q) => emit({ event: 'query', ...q }) });
  emit({ event: 'listening', host: server.address, port: server.port });
  let buf = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      let id: unknown;
      try {
        const cmd = JSON.parse(line) as { id?: unknown; set?: DnsZone; delete?: string; zone?: DnsZone };
        id = cmd.id;
        if (cmd.zone) server.replace(cmd.zone);
        for (const [n, s] of Object.entries(cmd.set ?? {})) server.set(n, s);
        if (cmd.delete) server.delete(cmd.delete);
        emit({ event: 'updated', id });
      } catch (e) {
        emit({ event: 'commandError', id, message: (e as Error).message });
      }
    }
  });
  const stop = (): void => {
    void server.close().then(() => process.exit(0));
  };
  process.stdin.on('end', stop);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  cli(process.argv.slice(2)).catch((e: unknown) => {
    process.stderr.write(`dns-server: ${(e as Error).message}\n`);
    process.exit(2);
  });
}
