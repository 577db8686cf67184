import path from 'node:path';
import { parseArgs } from 'node:util';
import { PortcullisError } from '../common/errors.js';
import { DEFAULT_AUDIENCE, issueToken, LOCAL_ISSUER, localJwks, loadOrCreateTokenKey, loadTokenKey, MAX_TOKEN_TTL_SECONDS, parseTtl } from '../mcp/token.js';
import { EXIT, type CliIo } from './io.js';

export const TOKEN_USAGE = `Usage: portcullis token issue --sub NAME [--ttl 15m] [--aud AUDIENCE]... [--data-dir DIR] [--json]
       portcullis token jwks [--data-dir DIR]

issue  Mint a local-mode MCP bearer token for caller NAME, signed with the local key in the data
       dir (created, mode 0600, on first use). Prints the token (or, with --json, the token and its
       claims). Lifetime at most ${MAX_TOKEN_TTL_SECONDS / 60}m; audience default ${DEFAULT_AUDIENCE}.
jwks   Print the public JWKS Envoy validates local tokens with.

The data dir defaults to $PORTCULLIS_DATA_DIR, else ./data.`;

export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.resolve(env.PORTCULLIS_DATA_DIR ?? 'data');
}

/** `portcullis token …`; returns the exit code. */
export async function runTokenCli(argv: string[], io: CliIo, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') {
    io.stdout.write(`${TOKEN_USAGE}\n`);
    return sub === undefined ? EXIT.usage : EXIT.ok;
  }
  let values;
  try {
    values = parseArgs({
      args: rest,
      options: {
        sub: { type: 'string' },
        ttl: { type: 'string', default: '15m' },
        aud: { type: 'string', multiple: true },
        'data-dir': { type: 'string' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (e) {
    io.stderr.write(`${(e as Error).message}\n\n${TOKEN_USAGE}\n`);
    return EXIT.usage;
  }
  if (values.help) {
    io.stdout.write(`${TOKEN_USAGE}\n`);
    return EXIT.ok;
  }
  const dataDir = path.resolve(values['data-dir'] ?? defaultDataDir(env));
  try {
    switch (sub) {
      case 'issue': {
        if (!values.sub) {
          io.stderr.write(`--sub NAME is required\n\n${TOKEN_USAGE}\n`);
          return EXIT.usage;
        }
        const ttl = parseTtl(values.ttl!);
        if (ttl === undefined || ttl < 1 || ttl > MAX_TOKEN_TTL_SECONDS) {
          io.stderr.write(`--ttl must be a duration between 1s and ${MAX_TOKEN_TTL_SECONDS / 60}m (e.g. 15m)\n`);
          return EXIT.usage;
        }
        const aud = values.aud?.length ? (values.aud.length === 1 ? values.aud[0]! : values.aud) : DEFAULT_AUDIENCE;
        const { key, created } = await loadOrCreateTokenKey(dataDir);
        if (created) io.stderr.write(`created the local token signing key in ${dataDir} (kid ${key.kid})\n`);
        const t = await issueToken(key, { sub: values.sub, ttlSeconds: ttl, audience: aud, issuer: LOCAL_ISSUER });
        if (values.json) io.stdout.write(`${JSON.stringify({ token: t.token, kid: key.kid, claims: t.claims }, null, 2)}\n`);
        else io.stdout.write(`${t.token}\n`);
        return EXIT.ok;
      }
      case 'jwks': {
        const key = await loadTokenKey(dataDir);
        if (!key) {
          io.stderr.write(`no local token signing key in ${dataDir} (issue a token first)\n`);
          return EXIT.failure;
        }
        io.stdout.write(`${JSON.stringify(localJwks(key), null, 2)}\n`);
        return EXIT.ok;
      }
      default:
        io.stderr.write(`unknown token command: ${sub}\n\n${TOKEN_USAGE}\n`);
        return EXIT.usage;
    }
  } catch (e) {
    if (e instanceof PortcullisError) {
      io.stderr.write(`portcullis token: ${e.message}\n`);
      return e.code === 'usage' ? EXIT.usage : EXIT.failure;
    }
    throw e;
  }
}
