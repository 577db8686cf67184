/**
 * Test hosts in network namespaces, for e2e tests that need upstreams, resolvers and clients that are
 * not on loopback. Root privileges and iproute2 are required (gate with `e2eGate(['root', 'netns'])`).
 *
 * Layout (one test net, `<id>` = "pct" + 4 random hex digits, e.g. "pct3fa9"):
 *
 *   root namespace (Envoy runs here)           <id>-hub namespace                 <id>-<host> namespaces
 *   ┌──────────────────────────────┐   veth   ┌──────────────────────┐   veth   ┌────────────────────────┐
 *   │ <id>-r   198.51.100.1/24     │──────────│ up0 ─┐               │──────────│ eth0  198.51.100.10/24 │ e.g. <id>-up1
 *   │ (2001:db8:5100::1/64 opt.)   │          │      br0 (bridge) ─ h0│          └────────────────────────┘
 *   └──────────────────────────────┘          │          └──────── h1│──────────  eth0  198.51.100.11/24  e.g. <id>-cli
 *                                             └──────────────────────┘
 *
 * The bridge lives in its own namespace, not in the root one: the root namespace gets exactly one
 * interface (`<id>-r`) and one connected route (198.51.100.0/24), and traffic between test hosts never
 * crosses the root namespace's netfilter FORWARD chain (which Docker sets to DROP, and which
 * br_netfilter would apply to a bridge in the root namespace). Test hosts have no default route: they
 * reach each other and 198.51.100.1, nothing else.
 *
 * One test net per subnet at a time on the machine: creation takes a lock file in
 * /run/portcullis-testnet and waits (bounded) for another live run to finish. Leftovers of runs whose
 * process died are removed on the next creation, by name prefix.
 */
import { execFile, execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export const TESTNET_CIDR = '198.51.100.0/24';
export const TESTNET_ROOT_IP = '198.51.100.1';
/** Host addresses start here, in the order of `hosts`. */
export const TESTNET_FIRST_HOST = 10;
export const TESTNET6_PREFIX = '2001:db8:5100::';
export const TESTNET6_ROOT_IP = '2001:db8:5100::1';

const STATE_DIR = '/run/portcullis-testnet';
const LOCK_FILE = path.join(STATE_DIR, 'subnet-198.51.100.0-24.lock');
const ID_RE = /^pct[0-9a-f]{4}$/;
const LEFTOVER_RE = /^(pct[0-9a-f]{4})-/;
const HOST_NAME_RE = /^[a-z][a-z0-9]{0,7}$/;

export interface TestNetOptions {
  /** Short host names (`[a-z][a-z0-9]{0,7}`); each becomes the namespace `<id>-<name>`. */
  hosts: readonly string[];
  /** Also give every host and the root an address in 2001:db8:5100::/64 (no DAD). Default false. */
  ipv6?: boolean;
  /** How long to wait for another live test net on the same subnet. Default 120 s. */
  lockTimeoutMs?: number;
}

export interface TestHost {
  /** The short name given in `hosts`. */
  name: string;
  /** The network namespace name (for `ip netns exec`). */
  netns: string;
  ip: string;
  /** Set when `ipv6` was requested. */
  ip6?: string;
}

export interface RunOptions {
  /** Reject on a non-zero exit (default true). */
  check?: boolean;
  timeoutMs?: number;
  input?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface TestNet {
  /** Unique per run, e.g. "pct3fa9"; prefix of every name this net creates. */
  readonly id: string;
  readonly cidr: string;
  /** The root namespace's address on the test net (where Envoy listens for test hosts). */
  readonly rootIp: string;
  readonly rootIp6: string | undefined;
  /** The root namespace's interface on the test net. */
  readonly rootIf: string;
  readonly hubNetns: string;
  readonly hosts: Readonly<Record<string, TestHost>>;
  host(name: string): TestHost;
  runIn(host: string, cmd: string, args?: readonly string[], opts?: RunOptions): Promise<RunResult>;
  spawnIn(host: string, cmd: string, args?: readonly string[], opts?: SpawnOptions): ChildProcess;
  /** Removes every namespace, interface and process of this net. Idempotent. */
  destroy(): Promise<void>;
  destroySync(): void;
}

interface StateFile {
  id: string;
  pid: number;
  hosts: string[];
  createdAt: string;
}

// ---------------------------------------------------------------------------------------------
// ip helpers
// ---------------------------------------------------------------------------------------------

function ipSync(args: readonly string[], allowFail = false): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 15_000 });
  } catch (e) {
    if (allowFail) return '';
    const err = e as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')} failed: ${(err.stderr ?? '').trim() || err.message}`);
  }
}

function ip(args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('ip', args, { encoding: 'utf8', timeout: 15_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`ip ${args.join(' ')} failed: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
  });
}

function listNetns(): string[] {
  // "name (id: 3)" or "name"
  return ipSync(['netns', 'list'], true)
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n !== '');
}

function listRootLinks(): string[] {
  return ipSync(['-o', 'link', 'show'], true)
    .split('\n')
    .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
    .filter((n): n is string => n !== undefined);
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------------------------------------
// run / spawn inside a namespace
// ---------------------------------------------------------------------------------------------

/** Runs `cmd args` inside the network namespace `netns` (`ip netns exec`). */
export function runIn(netns: string, cmd: string, args: readonly string[] = [], opts: RunOptions = {}): Promise<RunResult> {
  const check = opts.check ?? true;
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', netns, cmd, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
      cwd: opts.cwd,
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer =
      opts.timeoutMs !== undefined
        ? setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, opts.timeoutMs)
        : undefined;
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      const res = { code: code ?? 128, stdout, stderr };
      const what = `[${netns}] ${cmd} ${args.join(' ')}`;
      if (timedOut) reject(new Error(`${what}: timed out after ${opts.timeoutMs} ms\n${stderr}`));
      else if (check && code !== 0) reject(new Error(`${what}: exit ${code ?? signal}\n${stderr.trim()}`));
      else resolve(res);
    });
    // a child that exits before reading its stdin makes the write fail with EPIPE: not an error here
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

/**
 * Spawns `cmd args` inside `netns`. `ip netns exec` execs the command, so the child's pid is the
 * command's own and `child.kill()` reaches it.
 */
export function spawnIn(netns: string, cmd: string, args: readonly string[] = [], opts: SpawnOptions = {}): ChildProcess {
  return spawn('ip', ['netns', 'exec', netns, cmd, ...args], opts);
}

// ---------------------------------------------------------------------------------------------
// teardown (shared by destroy and leftover cleanup)
// ---------------------------------------------------------------------------------------------

function killNetnsPids(netns: string): void {
  const pids = ipSync(['netns', 'pids', netns], true)
    .split(/\s+/)
    .map(Number)
    .filter((p) => Number.isInteger(p) && p > 0 && p !== process.pid);
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

/** Removes everything named `<id>-…`: processes in its namespaces, the namespaces, its root veth. */
function teardownSync(id: string): void {
  if (!ID_RE.test(id)) throw new Error(`refusing to tear down '${id}': not a test net id`);
  const mine = listNetns().filter((n) => n.startsWith(`${id}-`));
  // Hosts first, hub last (deleting a host namespace removes its veth pair from the hub too).
  mine.sort((a, b) => Number(a.endsWith('-hub')) - Number(b.endsWith('-hub')));
  for (const ns of mine) killNetnsPids(ns);
  for (const link of listRootLinks().filter((l) => l.startsWith(`${id}-`))) ipSync(['link', 'del', link], true);
  for (const ns of mine) ipSync(['netns', 'del', ns], true);
  try {
    fs.rmSync(path.join(STATE_DIR, `${id}.json`), { force: true });
  } catch {
    /* ignore */
  }
  releaseLockIfHeldBy(id);
}

function readState(id: string): StateFile | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(STATE_DIR, `${id}.json`), 'utf8')) as StateFile;
  } catch {
    return undefined;
  }
}

function releaseLockIfHeldBy(id: string): void {
  try {
    if (fs.readFileSync(LOCK_FILE, 'utf8').trim() === id) fs.rmSync(LOCK_FILE, { force: true });
  } catch {
    /* no lock */
  }
}

/**
 * Removes test nets left by runs whose process is gone (by name prefix `pct????-`), and their lock.
 * Live runs (state file naming a live pid) are left alone. Returns the ids removed.
 */
export function cleanupStaleTestNets(): string[] {
  const ids = new Set<string>();
  for (const n of [...listNetns(), ...listRootLinks()]) {
    const m = LEFTOVER_RE.exec(n);
    if (m?.[1]) ids.add(m[1]);
  }
  if (fs.existsSync(STATE_DIR)) {
    for (const f of fs.readdirSync(STATE_DIR)) {
      const m = /^(pct[0-9a-f]{4})\.json$/.exec(f);
      if (m?.[1]) ids.add(m[1]);
    }
  }
  const removed: string[] = [];
  for (const id of ids) {
    const st = readState(id);
    if (st && pidAlive(st.pid)) continue;
    teardownSync(id);
    removed.push(id);
  }
  // A lock whose holder has no live state file is stale.
  try {
    const holder = fs.readFileSync(LOCK_FILE, 'utf8').trim();
    const st = readState(holder);
    if (!st || !pidAlive(st.pid)) fs.rmSync(LOCK_FILE, { force: true });
  } catch {
    /* no lock */
  }
  return removed;
}

// ---------------------------------------------------------------------------------------------
// create
// ---------------------------------------------------------------------------------------------

const live = new Set<string>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const id of live) {
      try {
        teardownSync(id);
      } catch {
        /* best effort at exit */
      }
    }
  });
}

async function acquireLock(id: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      fs.writeFileSync(LOCK_FILE, id, { flag: 'wx', mode: 0o644 });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    cleanupStaleTestNets();
    if (Date.now() > deadline) {
      let holder = '?';
      try {
        holder = fs.readFileSync(LOCK_FILE, 'utf8').trim();
      } catch {
        continue;
      }
      const st = readState(holder);
      throw new Error(
        `test net ${TESTNET_CIDR} is held by ${holder} (pid ${st?.pid ?? '?'}) for more than ${timeoutMs} ms; ` +
          `a stuck run can be removed with: ip netns del <${holder}-*>; rm ${LOCK_FILE}`,
      );
    }
    await sleep(250);
  }
}

function assertSubnetFree(): void {
  const out = ipSync(['-o', '-4', 'addr', 'show'], true);
  for (const line of out.split('\n')) {
    const m = /^\d+:\s+(\S+)\s+inet\s+198\.51\.100\.\d+\//.exec(line);
    if (m) throw new Error(`${TESTNET_CIDR} is already in use on interface ${m[1]} (not ours); not touching it`);
  }
}

/** Creates the test net. Call `destroy()` in `afterAll`. */
export async function createTestNet(opts: TestNetOptions): Promise<TestNet> {
  const names = [...opts.hosts];
  if (names.length === 0) throw new Error('createTestNet: at least one host');
  if (names.length > 200) throw new Error('createTestNet: at most 200 hosts');
  for (const n of names) {
    if (!HOST_NAME_RE.test(n) || n === 'hub') throw new Error(`createTestNet: bad host name '${n}' (${HOST_NAME_RE}, not 'hub')`);
  }
  if (new Set(names).size !== names.length) throw new Error('createTestNet: duplicate host names');
  if (process.getuid?.() !== 0) throw new Error('createTestNet: needs root');

  fs.mkdirSync(STATE_DIR, { recursive: true, mode: 0o755 });
  let id: string;
  do id = `pct${randomBytes(2).toString('hex')}`;
  while (listNetns().some((n) => n.startsWith(`${id}-`)) || fs.existsSync(path.join(STATE_DIR, `${id}.json`)));

  // The state file exists before the lock is taken and before anything is created: a lock holder
  // always has one, and a crash at any point leaves a record naming its (then dead) pid.
  const state: StateFile = { id, pid: process.pid, hosts: names, createdAt: new Date().toISOString() };
  const stateFile = path.join(STATE_DIR, `${id}.json`);
  fs.writeFileSync(stateFile, JSON.stringify(state) + '\n');
  live.add(id);
  installExitHook();
  try {
    cleanupStaleTestNets();
    await acquireLock(id, opts.lockTimeoutMs ?? 120_000);
  } catch (e) {
    live.delete(id);
    fs.rmSync(stateFile, { force: true });
    throw e;
  }

  const hub = `${id}-hub`;
  const rootIf = `${id}-r`;
  const ipv6 = opts.ipv6 ?? false;
  const hosts: Record<string, TestHost> = {};
  try {
    assertSubnetFree();
    await ip(['netns', 'add', hub]);
    await ip(['-n', hub, 'link', 'set', 'lo', 'up']);
    await ip(['-n', hub, 'link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0']);
    await ip(['-n', hub, 'link', 'set', 'br0', 'up']);
    await ip(['link', 'add', 'name', rootIf, 'type', 'veth', 'peer', 'name', 'up0', 'netns', hub]);
    await ip(['-n', hub, 'link', 'set', 'up0', 'master', 'br0', 'up']);
    if (ipv6) {
      fs.writeFileSync(`/proc/sys/net/ipv6/conf/${rootIf}/accept_ra`, '0');
      await ip(['-6', 'addr', 'add', `${TESTNET6_ROOT_IP}/64`, 'dev', rootIf, 'nodad']);
    }
    await ip(['addr', 'add', `${TESTNET_ROOT_IP}/24`, 'dev', rootIf]);
    await ip(['link', 'set', rootIf, 'up']);

    for (const [i, name] of names.entries()) {
      const ns = `${id}-${name}`;
      const hostIp = `198.51.100.${TESTNET_FIRST_HOST + i}`;
      await ip(['netns', 'add', ns]);
      await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      await ip(['link', 'add', 'name', `h${i}`, 'netns', hub, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      await ip(['-n', hub, 'link', 'set', `h${i}`, 'master', 'br0', 'up']);
      await ip(['-n', ns, 'addr', 'add', `${hostIp}/24`, 'dev', 'eth0']);
      const h: TestHost = { name, netns: ns, ip: hostIp };
      if (ipv6) {
        h.ip6 = `${TESTNET6_PREFIX}${(TESTNET_FIRST_HOST + i).toString(16)}`;
        await ip(['-n', ns, '-6', 'addr', 'add', `${h.ip6}/64`, 'dev', 'eth0', 'nodad']);
      }
      await ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
      hosts[name] = h;
    }
  } catch (e) {
    live.delete(id);
    teardownSync(id);
    throw e;
  }

  let destroyed = false;
  const host = (name: string): TestHost => {
    const h = hosts[name];
    if (!h) throw new Error(`test net ${id}: no host '${name}' (have: ${names.join(', ')})`);
    return h;
  };
  const destroySync = (): void => {
    if (destroyed) return;
    teardownSync(id);
    live.delete(id);
    destroyed = true;
  };
  return {
    id,
    cidr: TESTNET_CIDR,
    rootIp: TESTNET_ROOT_IP,
    rootIp6: ipv6 ? TESTNET6_ROOT_IP : undefined,
    rootIf,
    hubNetns: hub,
    hosts,
    host,
    runIn: (name, cmd, args = [], o = {}) => runIn(host(name).netns, cmd, args, o),
    spawnIn: (name, cmd, args = [], o = {}) => spawnIn(host(name).netns, cmd, args, o),
    destroy: async () => destroySync(),
    destroySync,
  };
}
