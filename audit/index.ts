export { canonical } from './canonical.js';
export {
  FORMAT,
  GENESIS_PREV,
  MERKLE_ALG,
  VERIFY_REASONS,
  merkleRoot,
  type CheckpointBody,
  type CheckpointStatement,
  type HeaderBody,
  type RecordType,
  type SealBody,
  type VerifyReason,
} from './chain.js';
export { AuditEventInvalidError, AuditLogCorruptError, AuditWriteError } from './errors.js';
export { nodeAuditIo, readHeadSidecar, headSidecarPath, type AppendFile, type AuditIo, type HeadSidecar } from './io.js';
export { exportJwks, generateSigningKey, JWKS_FILE, loadOrCreateSigningKey, readJwks, SIGNING_KEY_FILE, type AuditSigningKey } from './keys.js';
export * from './ocsf.js';
export { requireAudit, type AuditAppender, type RequireAuditOptions } from './require-audit.js';
export { AUDIT_SOCKET_FILE, AUDIT_TOKEN_FILE, AuditClient, AuditServer, loadOrCreateToken, type AuditClientOptions, type AuditServerOptions } from './server.js';
export { verify, type VerifyFail, type VerifyOk, type VerifyOptions, type VerifyResult } from './verify.js';
export {
  AUDIT_LOG_FILE,
  AuditWriter,
  DEFAULT_CHECKPOINT_EVERY,
  DEFAULT_CHECKPOINT_INTERVAL_MS,
  type AppendResult,
  type AuditWriterOptions,
  type AuditWriterStats,
  type RecoveryInfo,
} from './writer.js';
export { runAuditCli, EXIT_OK, EXIT_TAMPER, EXIT_USAGE, type AuditCliIo } from './cli.js';
