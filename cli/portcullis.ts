#!/usr/bin/env node
import fs from 'node:fs';
import path from 'node:path';
import { projectRoot } from '../common/paths.js';
import { runPolicyCli } from '../policy/cli.js';
import { runUp } from './up.js';
import { registerRender } from './render.js';
import { runAuditCli } from '../audit/cli.js';
import { runDoctor } from './doctor.js';
import { EXIT, type CliIo } from './io.js';
import { isOperatorCommand, runOperatorCli } from './operator.js';
import { runTokenCli } from './token.js';

const USAGE = `Usage: portcullis <command> [options]

Commands:
  up                 start the control plane and Envoy with a policy (default: the solo default)
  doctor             check every prerequisite and print the fix for each one missing
  policy <sub>       validate | explain | diff | test | render | schema  (portcullis policy --help)
  audit verify FILE  check the audit log's hash chain and signed checkpoints
  token issue        mint a local-mode MCP bearer token (portcullis token --help)
  sessions, kill-all, denylist, policy status, soar, tripwire, ca rotate
                     the operator API of a running \`portcullis up\` (portcullis sessions --help)
  version            print versions

Every command prints human output by default and JSON with --json. Exit codes: 0 ok, 1 failure,
2 usage.`;

export async function main(argv: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [cmd, ...rest] = argv;
  if (isOperatorCommand(cmd, rest)) return runOperatorCli(argv, io);
  switch (cmd) {
    case 'up':
      return runUp(rest, io);
    case 'policy':
      registerRender();
      return runPolicyCli(rest, io);
    case 'audit':
      return runAuditCli(rest, io);
    case 'token':
      return runTokenCli(rest, io);
    case 'doctor':
      return runDoctor(rest, io);
    case 'version':
    case '--version': {
      const pkg = JSON.parse(fs.readFileSync(path.join(projectRoot(), 'package.json'), 'utf8')) as { version: string };
      io.stdout.write(`portcullis ${pkg.version}\n`);
      return EXIT.ok;
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      io.stdout.write(`${USAGE}\n`);
      return cmd === undefined ? EXIT.usage : EXIT.ok;
    default:
      io.stderr.write(`unknown command: ${cmd}\n\n${USAGE}\n`);
      return EXIT.usage;
  }
}

const isMain = process.argv[1] && /portcullis(\.[jt]s)?$/.test(process.argv[1]);
if (isMain) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e) => {
      process.stderr.write(`portcullis: internal error: ${(e as Error).message}\n`);
      process.exit(EXIT.failure);
    },
  );
}
