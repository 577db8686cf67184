import { dirname, join } from 'node:path';
import type { Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import type { JSONWebKeySet } from 'jose';
import { JWKS_FILE, readJwks } from './keys.js';
import { verify, type VerifyResult } from './verify.js';

/**
 * `portcullis audit verify FILE [--json] [--jwks JWKS] [--no-head]`
 *
 * Exit codes: 0 the log verifies, 1 tampering or damage found, 2 usage (bad arguments, JWKS
 * missing or unreadable, log unreadable).
 */

export const EXIT_OK = 0;
export const EXIT_TAMPER = 1;
export const EXIT_USAGE = 2;

export interface AuditCliIo {
  stdout: Writable;
  stderr: Writable;
}

const USAGE = `usage: portcullis audit verify FILE [--json] [--jwks JWKS_FILE] [--no-head]

  Verify an audit log: hash chain, record order, checkpoint signatures and Merkle roots, and the
  tail against the head sidecar (FILE.head).

  --jwks FILE   public keys for checkpoint signatures (default: ${JWKS_FILE} next to FILE;
                prefer a copy kept off the host)
  --no-head     do not compare the tail with FILE.head
  --json        machine-readable result
`;

function out(s: Writable, text: string): void {
  s.write(text.endsWith('\n') ? text : `${text}\n`);
}

export async function runAuditCli(argv: string[], io: AuditCliIo): Promise<number> {
  const args = argv[0] === 'audit' ? argv.slice(1) : argv;
  const [cmd, ...rest] = args;
  if (cmd === undefined || cmd === 'help' || cmd === '--help' || cmd === '-h') {
    out(cmd === undefined ? io.stderr : io.stdout, USAGE);
    return cmd === undefined ? EXIT_USAGE : EXIT_OK;
  }
  if (cmd !== 'verify') {
    out(io.stderr, `unknown audit command "${cmd}"\n\n${USAGE}`);
    return EXIT_USAGE;
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: rest,
      options: { json: { type: 'boolean' }, jwks: { type: 'string' }, 'no-head': { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    out(io.stderr, `${(e as Error).message.split('\n')[0]}\n\n${USAGE}`);
    return EXIT_USAGE;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    out(io.stdout, USAGE);
    return EXIT_OK;
  }
  if (positionals.length !== 1) {
    out(io.stderr, `verify needs exactly one FILE\n\n${USAGE}`);
    return EXIT_USAGE;
  }
  const file = positionals[0]!;
  const jwksPath = values.jwks ?? join(dirname(file), JWKS_FILE);
  let jwks: JSONWebKeySet;
  try {
    jwks = await readJwks(jwksPath);
  } catch (e) {
    out(io.stderr, `cannot read JWKS ${jwksPath}: ${(e as Error).message} (pass --jwks FILE)`);
    return EXIT_USAGE;
  }
  let result: VerifyResult;
  try {
    result = await verify(file, { jwks, ...(values['no-head'] ? { head: false as const } : {}) });
  } catch (e) {
    out(io.stderr, `cannot verify ${file}: ${(e as Error).message}`);
    return EXIT_USAGE;
  }
  if (!result.ok && result.reason === 'io_error') {
    if (values.json) out(io.stdout, JSON.stringify(result));
    else out(io.stderr, `cannot read ${file}: ${result.message}`);
    return EXIT_USAGE;
  }
  if (values.json) {
    out(io.stdout, JSON.stringify(result));
  } else if (result.ok) {
    const notes = [
      `${result.records - result.uncheckpointed} covered by checkpoints, ${result.uncheckpointed} after the last`,
      ...(result.seals > 0 ? [`${result.seals} seal(s) from crash repair`] : []),
      result.headChecked ? 'tail matches head sidecar' : 'head sidecar not checked',
    ];
    out(io.stdout, `OK: ${result.records} records, ${result.checkpoints} checkpoints, chain head seq ${result.head.seq} ${result.head.hash} (${notes.join('; ')})`);
    for (const w of result.warnings) out(io.stderr, `warning: ${w}`);
  } else {
    const at = result.seq === null ? `line ${result.line}` : `record seq ${result.seq} (line ${result.line})`;
    out(io.stdout, `FAIL at ${at}: ${result.reason} — ${result.message}`);
  }
  return result.ok ? EXIT_OK : EXIT_TAMPER;
}
