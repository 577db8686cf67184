import { PortcullisError, type ErrorDetails } from '../common/errors.js';

/**
 * The audit log could not durably record an event (disk error, EACCES, ENOSPC, writer closed or
 * broken). Callers must treat this as "the action is not allowed": the audit pipeline fails closed.
 */
export class AuditWriteError extends PortcullisError {
  constructor(message: string, opts: { details?: ErrorDetails; cause?: unknown } = {}) {
    super('audit_write_failed', message, { ...opts, publicMessage: 'audit write failed' });
  }
}

/** The event handed to the writer is not an acceptable OCSF event (or not plain JSON). */
export class AuditEventInvalidError extends PortcullisError {
  constructor(message: string, opts: { details?: ErrorDetails; cause?: unknown } = {}) {
    super('audit_event_invalid', message, { ...opts, publicMessage: 'audit event invalid' });
  }
}

/**
 * The log on disk is damaged in a way a crash cannot explain (acknowledged records missing or
 * altered). The writer refuses to continue such a log; an operator has to look at it.
 */
export class AuditLogCorruptError extends PortcullisError {
  constructor(message: string, opts: { details?: ErrorDetails; cause?: unknown } = {}) {
    super('audit_log_corrupt', message, { ...opts, publicMessage: 'audit log corrupt' });
  }
}
