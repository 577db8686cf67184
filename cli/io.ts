import type { Writable } from 'node:stream';

export interface CliIo {
  stdout: Writable;
  stderr: Writable;
}

export const EXIT = { ok: 0, failure: 1, usage: 2, interrupted: 130 } as const;

/** Progress lines for long operations: `• step … result`, on stderr so stdout stays parseable. */
export class Progress {
  constructor(private readonly io: CliIo, private readonly quiet = false) {}
  private started = 0;
  step(what: string): void {
    this.started = Date.now();
    if (!this.quiet) this.io.stderr.write(`• ${what} … `);
  }
  done(result = 'ok'): void {
    if (!this.quiet) this.io.stderr.write(`${result} (${Date.now() - this.started} ms)\n`);
  }
  fail(reason: string, fix?: string): void {
    if (!this.quiet) this.io.stderr.write(`FAILED\n  ${reason}\n${fix ? `  fix: ${fix}\n` : ''}`);
  }
  note(line: string): void {
    if (!this.quiet) this.io.stderr.write(`  ${line}\n`);
  }
}
