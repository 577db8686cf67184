import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EventBus } from '../common/events.js';
import { createLogger, silentLogger } from '../common/logger.js';
import { PolicyError } from './errors.js';
import { irToJson, type Ir } from './ir.js';
import { PolicyWatcher, type ReloadRefusal } from './watch.js';

const HEAD = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';
const policy = (hosts: string[], extra = '') => `${HEAD}egress:\n  allow:\n${hosts.map((h) => `    - host: ${h}\n`).join('')}${extra}`;
const SECRET = 'sk-test-9f8e7d6c5b4a';

let dir: string;
let file: string;
let watcher: PolicyWatcher | undefined;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-watch-'));
  file = path.join(dir, 'policy.yaml');
});
afterEach(() => {
  watcher?.stop();
  watcher = undefined;
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Resolve on the first event accepted by `accept`; the timeout is only a safety net for a hung test. */
function next<T extends unknown[]>(w: PolicyWatcher, event: 'update' | 'refused' | 'credentials', accept: (...args: T) => boolean = () => true): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${event}' event`)), 10_000);
    const on = (...args: unknown[]) => {
      if (!accept(...(args as T))) return;
      clearTimeout(timer);
      w.off(event, on as never);
      resolve(args as T);
    };
    w.on(event, on as never);
  });
}

const hosts = (ir: Ir) => ir.egress.destinations.map((d) => d.host);

/** Replace the file in one step, so no reader ever sees it half-written. */
function atomicWrite(target: string, text: string): void {
  const tmp = path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.tmp`);
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, target);
}

function make(opts: { events?: EventBus; log?: PassThrough } = {}): PolicyWatcher {
  const logger = opts.log ? createLogger({ destination: opts.log, level: 'info' }) : silentLogger();
  watcher = new PolicyWatcher({ file, logger, events: opts.events, debounceMs: 20, settleMs: 20, displayName: 'policy.yaml' });
  return watcher;
}

describe('PolicyWatcher', () => {
  it('refuses to start on an invalid policy', async () => {
    fs.writeFileSync(file, `${HEAD}egress: { rung: nope }\n`);
    await expect(make().start()).rejects.toBeInstanceOf(PolicyError);
  });

  it('pushes a valid change and keeps the last good IR on an invalid one', async () => {
    fs.writeFileSync(file, policy(['a.example.com']));
    const bus = new EventBus();
    const log = new PassThrough();
    let logged = '';
    log.on('data', (c: Buffer) => (logged += c.toString()));
    const w = make({ events: bus, log });
    const first = await w.start();
    expect(hosts(first)).toEqual(['a.example.com']);

    const refused = next<[ReloadRefusal]>(w, 'refused');
    atomicWrite(file, policy(['"*.com"']));
    const [r] = await refused;
    expect(r.code).toBe('policy_invalid');
    expect(r.issues.map((i) => `${i.file}:${i.line}:${i.col} ${i.path}`)).toEqual(['policy.yaml:6:13 egress.allow[0].host']);
    expect(w.current()).toBe(first);
    const ev = bus.history('config.reload_refused');
    expect(ev).toHaveLength(1);
    expect(ev[0]).toMatchObject({ severity: 'error', source: 'policy', data: { file: 'policy.yaml', code: 'policy_invalid' } });
    expect(JSON.stringify(ev[0]!.data)).toContain("wildcard '*.com' covers a public suffix");
    expect(logged).toContain("policy.yaml:6:13 egress.allow[0].host: wildcard '*.com' covers a public suffix");
    expect(logged).toContain('last-known-good');

    const updated = next<[Ir]>(w, 'update');
    atomicWrite(file, policy(['b.example.com']));
    const [ir] = await updated;
    expect(hosts(ir)).toEqual(['b.example.com']);
    expect(w.current()).toBe(ir);
    expect(bus.history('config.policy_reloaded')).toHaveLength(1);
  });

  it('handles an atomic rename', async () => {
    fs.writeFileSync(file, policy(['a.example.com']));
    const w = make();
    await w.start();
    const updated = next<[Ir]>(w, 'update');
    const tmp = path.join(dir, '.policy.yaml.tmp');
    fs.writeFileSync(tmp, policy(['c.example.com']));
    fs.renameSync(tmp, file);
    expect(hosts((await updated)[0])).toEqual(['c.example.com']);
  });

  it('handles a delete then recreate, keeping the last good IR meanwhile', async () => {
    fs.writeFileSync(file, policy(['a.example.com']));
    const w = make();
    const first = await w.start();
    const refused = next<[ReloadRefusal]>(w, 'refused');
    fs.rmSync(file);
    const [r] = await refused;
    expect(r.code).toBe('policy_unreadable');
    expect(w.current()).toBe(first);
    const updated = next<[Ir]>(w, 'update');
    fs.writeFileSync(file, policy(['d.example.com']));
    expect(hosts((await updated)[0])).toEqual(['d.example.com']);
  });

  it('judges a partial write only once it completes', async () => {
    fs.writeFileSync(file, policy(['a.example.com']));
    const w = make();
    const first = await w.start();
    w.stop();
    const full = policy(['e.example.com', 'f.example.com']);
    const cut = full.indexOf('f.example.com') - 4;
    fs.writeFileSync(file, full.slice(0, cut));
    expect(await w.reload()).toBe('refused');
    expect(w.current()).toBe(first);
    fs.appendFileSync(file, full.slice(cut));
    expect(await w.reload()).toBe('updated');
    expect(hosts(w.current()!)).toEqual(['e.example.com', 'f.example.com']);
  });

  it('a write in pieces through the file watcher ends with the complete policy', async () => {
    fs.writeFileSync(file, policy(['a.example.com']));
    const w = make();
    await w.start();
    const updated = next<[Ir]>(w, 'update', (ir) => hosts(ir).includes('h.example.com'));
    const full = policy(['g.example.com', 'h.example.com']);
    const fd = fs.openSync(file, 'w');
    fs.writeSync(fd, full.slice(0, 40));
    fs.writeSync(fd, full.slice(40));
    fs.closeSync(fd);
    expect(hosts((await updated)[0])).toEqual(['g.example.com', 'h.example.com']);
  });

  it('refuses the same bad bytes once', async () => {
    fs.writeFileSync(file, policy(['a.example.com']));
    const bus = new EventBus();
    const w = make({ events: bus });
    await w.start();
    w.stop();
    fs.writeFileSync(file, `${HEAD}egress: 5\n`);
    expect(await w.reload()).toBe('refused');
    expect(await w.reload()).toBe('refused');
    expect(bus.history('config.reload_refused')).toHaveLength(1);
  });

  it('an unchanged policy is not pushed again', async () => {
    fs.writeFileSync(file, policy(['a.example.com']));
    const w = make();
    await w.start();
    w.stop();
    let updates = 0;
    w.on('update', () => updates++);
    fs.writeFileSync(file, `# a comment\n${policy(['a.example.com'])}`);
    expect(await w.reload()).toBe('unchanged');
    expect(updates).toBe(0);
  });

  it('reports credential file changes by name, never by content', async () => {
    fs.mkdirSync(path.join(dir, 'secrets'));
    const cred = path.join(dir, 'secrets', 'api.token');
    fs.writeFileSync(cred, 'old-secret-value');
    fs.writeFileSync(
      file,
      policy(['api.example.com'], '      rung: bump\n      credential: api\n  credentials:\n    - { name: api, header: authorization, source: { file: ./secrets/api.token } }\n'),
    );
    const bus = new EventBus();
    const w = make({ events: bus });
    const ir = await w.start();
    expect(irToJson(ir)).not.toContain('old-secret-value');
    const changed = next<[{ files: string[] }]>(w, 'credentials');
    const tmp = path.join(dir, 'secrets', '.api.token.new');
    fs.writeFileSync(tmp, SECRET);
    fs.renameSync(tmp, cred);
    const [c] = await changed;
    expect(c.files).toEqual([cred]);
    const events = bus.history('config.credentials_changed');
    expect(events).toHaveLength(1);
    expect(JSON.stringify(events)).not.toContain(SECRET);
  });
});
