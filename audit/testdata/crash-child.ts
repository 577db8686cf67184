import { silentLogger } from '../../common/logger.js';
import { sampleEvent } from '../testutil.js';
import { AuditWriter } from '../writer.js';

/**
 * Child process for the crash test: appends events from 16 concurrent appenders until killed,
 * printing `ACK <seq> <hash>` for each append whose promise resolved (stdout on a pipe is
 * synchronous on Linux, so a printed ACK was acknowledged before the kill).
 */
const dir = process.argv[2];
if (dir === undefined) throw new Error('usage: crash-child.ts DATA_DIR');
const w = await AuditWriter.open({ dataDir: dir, logger: silentLogger(), checkpointEvery: 64, checkpointIntervalMs: 0 });
process.stdout.write('READY\n');
let n = 0;
async function appender(): Promise<never> {
  for (;;) {
    const i = n++;
    const r = await w.append(sampleEvent(i, { burst: i }));
    process.stdout.write(`ACK ${r.seq} ${r.hash}\n`);
  }
}
await Promise.all(Array.from({ length: 16 }, appender));
