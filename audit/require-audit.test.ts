import { describe, expect, it, vi } from 'vitest';
import { PortcullisError } from '../common/errors.js';
import { AuditWriteError } from './errors.js';
import type { OcsfEvent } from './ocsf.js';
import { requireAudit, type AuditAppender } from './require-audit.js';
import { sampleEvent } from './testutil.js';

class MemoryAppender implements AuditAppender {
  events: OcsfEvent[] = [];
  failFrom = Infinity;
  async append(e: OcsfEvent) {
    if (this.events.length >= this.failFrom) throw new AuditWriteError('disk full');
    this.events.push(e);
    return { seq: this.events.length, hash: String(this.events.length).padStart(64, '0') };
  }
}

describe('requireAudit', () => {
  it('records the attempt before the action and the outcome after it', async () => {
    const a = new MemoryAppender();
    const order: string[] = [];
    const action = vi.fn(() => {
      order.push(`action after ${a.events.length} record(s)`);
      return 42;
    });
    await expect(requireAudit(a, sampleEvent(1), action, { clock: () => 5 })).resolves.toBe(42);
    expect(order).toEqual(['action after 1 record(s)']);
    expect(a.events).toHaveLength(2);
    expect(a.events[0]).toMatchObject({ status_id: 99, status: 'Attempt' });
    expect(a.events[1]).toMatchObject({ status_id: 1, status: 'Success', time: 5, unmapped: { attempt_seq: 1, trace_id: 'trace-1' } });
    expect(a.events[1]!.metadata).not.toEqual(a.events[0]!.metadata);
  });

  it('never calls the action when the attempt cannot be recorded', async () => {
    const a = new MemoryAppender();
    a.failFrom = 0;
    const action = vi.fn();
    await expect(requireAudit(a, sampleEvent(1), action)).rejects.toMatchObject({ code: 'audit_write_failed' });
    expect(action).not.toHaveBeenCalled();
  });

  it('records a failed action with its error code and rethrows the error', async () => {
    const a = new MemoryAppender();
    const boom = new PortcullisError('sandbox_failed', 'kill failed: /secret/path');
    await expect(requireAudit(a, sampleEvent(1), () => Promise.reject(boom))).rejects.toBe(boom);
    expect(a.events[1]).toMatchObject({ status_id: 2, status: 'Failure', status_detail: 'sandbox_failed' });
    expect(JSON.stringify(a.events[1])).not.toContain('/secret/path');
  });

  it('says so when the action completed but the outcome could not be recorded', async () => {
    const a = new MemoryAppender();
    a.failFrom = 1;
    const action = vi.fn(() => 'done');
    await expect(requireAudit(a, sampleEvent(1), action)).rejects.toMatchObject({ code: 'audit_write_failed', details: { actionCompleted: true, attemptSeq: 1 } });
    expect(action).toHaveBeenCalledOnce();
  });
});
