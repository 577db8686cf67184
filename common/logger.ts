import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger } from 'pino';

/**
 * Paths redacted in every log line. Secrets must never reach a log, but redaction is the
 * safety net, not the mechanism: code never passes secret values to the logger in the first place.
 */
export const REDACT_PATHS = [
  'secret',
  '*.secret',
  'token',
  '*.token',
  'privateKey',
  '*.privateKey',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'credential.value',
];

export interface LoggerConfig {
  level?: string;
  /** Write to this destination (defaults to stderr so stdout stays free for CLI output). */
  destination?: NodeJS.WritableStream;
  name?: string;
}

/** Root logger. Components receive children (`logger.child({ component })`), never build their own. */
export function createLogger(cfg: LoggerConfig = {}): Logger {
  const opts: LoggerOptions = {
    level: cfg.level ?? process.env.PORTCULLIS_LOG_LEVEL ?? 'info',
    name: cfg.name ?? 'portcullis',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: undefined,
  };
  return pino(opts, (cfg.destination ?? process.stderr) as pino.DestinationStream);
}

/** A logger that drops everything (tests that do not care about logs). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
