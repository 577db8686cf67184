import { z } from 'zod';
import { RUNTIMES, SESSION_BOUNDS, TRUST_PROFILES } from '../policy/schema.js';

/**
 * What the supervisor needs from the policy and the deployment, as one object: the trust profile and
 * runtime tier (admission), session bounds, the egress listener's port, the deployment CA certificate,
 * the image, and the per-sandbox limits. Tests build it directly; `portcullis up` derives it from the IR.
 */

const MiB = 1024 * 1024;

const InstanceId = z
  .string()
  .regex(/^[a-z0-9][a-z0-9-]{0,23}$/, 'lower-case letters, digits and dashes, at most 24 characters');

/** Env-name pattern: letters, digits, `_`, and `*` as a wildcard. */
const EnvPattern = z.string().regex(/^[A-Za-z0-9_*]{1,128}$/, 'an environment-variable name, `*` as a wildcard');

/** A path-segment sequence such as `.git/config`: denied wherever these segments appear in a row. */
const DenySequence = z.string().regex(/^[^/\0]+(\/[^/\0]+)*$/, 'segments separated by "/", no leading or trailing "/"');

const AbsolutePath = z.string().regex(/^\/[^\0]*$/, 'an absolute path');

export const SupervisorConfigSchema = z.strictObject({
  /** Labels, firewall-rule tags and names carry it; orphan cleanup only touches its own instance. */
  instanceId: InstanceId.default('default'),
  trustProfile: z.enum(TRUST_PROFILES),
  runtime: z.enum(RUNTIMES),
  /** Docker runtime name per tier (as registered in daemon.json). */
  dockerRuntimes: z
    .strictObject({ gvisor: z.string().min(1).default('runsc'), runc: z.string().min(1).default('runc') })
    .prefault({}),
  image: z.string().min(1),
  sessions: z.strictObject({
    tokenTtlSeconds: z.number().int().min(5).max(SESSION_BOUNDS.tokenTtlSeconds),
    idleTimeoutSeconds: z.number().int().min(1).max(SESSION_BOUNDS.idleTimeoutSeconds),
    absoluteLifetimeSeconds: z.number().int().min(1).max(SESSION_BOUNDS.absoluteLifetimeSeconds),
  }),
  /** The Envoy egress listener: reached at each session network's gateway address on this port. */
  egress: z.strictObject({ port: z.number().int().min(1).max(65535) }),
  /** PEM of the deployment CA (certificate only); added to the sandbox trust store. */
  caCertPemPath: AbsolutePath.optional(),
  /** Host directory for non-secret per-instance files (the composed CA bundle). */
  stateDir: AbsolutePath.default('/run/portcullis/sandbox'),
  limits: z
    .strictObject({
      memoryBytes: z.number().int().min(128 * MiB).default(1024 * MiB),
      /** CPU share in cores (NanoCpus). */
      cpus: z.number().min(0.1).max(64).default(1),
      /** Guest processes. runsc: RLIMIT_NPROC inside the sandbox; runc: the pids cgroup. */
      pids: z.number().int().min(16).max(65536).default(256),
      /** runsc only: host threads of the sandbox (the pids cgroup; the Sentry needs headroom). */
      hostThreads: z.number().int().min(64).max(65536).default(2048),
      tmpBytes: z.number().int().min(MiB).default(64 * MiB),
      workspaceBytes: z.number().int().min(MiB).default(256 * MiB),
      shmBytes: z.number().int().min(MiB).default(16 * MiB),
      nofile: z.number().int().min(64).max(1 << 20).default(4096),
      /**
       * The agent's watchdog kills the biggest process group when guest memory nears the limit (outcome
       * `oom`, the sandbox survives). Off: the cgroup limit kills the whole sandbox (outcome `oom`, the
       * session ends).
       */
      oomWatchdog: z.boolean().default(true),
    })
    .prefault({}),
  exec: z
    .strictObject({
      defaultTimeoutMs: z.number().int().min(1).max(3_600_000).default(300_000),
      maxOutputBytes: z.number().int().min(1024).max(64 * MiB).default(8 * MiB),
      /** `agent`: the in-sandbox agent over the session network (host dials); `docker-exec`: the Docker API. */
      transport: z.enum(['agent', 'docker-exec']).default('agent'),
    })
    .prefault({}),
  files: z
    .strictObject({
      maxReadBytes: z.number().int().min(1024).max(64 * MiB).default(8 * MiB),
      maxWriteBytes: z.number().int().min(1024).max(64 * MiB).default(8 * MiB),
      maxListEntries: z.number().int().min(1).max(100_000).default(10_000),
      /** Extra deny sequences on top of the mandatory list. */
      extraDeny: z.array(DenySequence).default(['.git/config']),
    })
    .prefault({}),
  env: z
    .strictObject({
      /** Names (or `*` patterns) a caller may add to an exec's environment. */
      allow: z
        .array(EnvPattern)
        .default([
          'LANG',
          'LANGUAGE',
          'LC_*',
          'TZ',
          'TERM',
          'COLUMNS',
          'LINES',
          'PATH',
          'PYTHONPATH',
          'PYTHONUNBUFFERED',
          'PYTHONDONTWRITEBYTECODE',
          'PYTHONIOENCODING',
          'PIP_*',
          'GIT_AUTHOR_NAME',
          'GIT_AUTHOR_EMAIL',
          'GIT_COMMITTER_NAME',
          'GIT_COMMITTER_EMAIL',
          'NODE_ENV',
          'CI',
          'DEBUG',
          'NO_COLOR',
          'FORCE_COLOR',
        ]),
      /** Patterns stripped on top of the mandatory `*_TOKEN`, `*_SECRET`, `*_PASSWORD`, `*API_KEY*`. */
      denyPatterns: z.array(EnvPattern).default(['TOKEN', 'SECRET', 'PASSWORD', '*_CREDENTIAL*', '*PRIVATE_KEY*', '*_PASSWD', '*SESSION_KEY*']),
    })
    .prefault({}),
  /** Never-used sandboxes kept ready under a placeholder identity. 0 disables the pool. */
  warmPool: z.number().int().min(0).max(32).default(0),
  maxSessions: z.number().int().min(1).max(500).default(32),
  /** The agent's TCP port inside the sandbox (on the session network only; the host dials it). */
  agentPort: z.number().int().min(1024).max(65535).default(7070),
  signingKeys: z
    .strictObject({
      /** NFR-SEC-11: ≤ 90 days. */
      rotateEveryHours: z.number().min(1).max(90 * 24).default(30 * 24),
      /** Old keys keep verifying this long after rotation (≥ the token TTL; NFR-SEC-11 says 24 h). */
      overlapHours: z.number().min(1).max(7 * 24).default(24),
    })
    .prefault({}),
  teardown: z
    .strictObject({
      scrubTimeoutMs: z.number().int().min(100).max(60_000).default(2_000),
      killTimeoutMs: z.number().int().min(100).max(60_000).default(10_000),
    })
    .prefault({}),
  /** Interval of the reconcile loop (idle/lifetime reaper backstop, leaked resources). */
  reconcileIntervalMs: z.number().int().min(100).max(600_000).default(30_000),
  docker: z.strictObject({ socketPath: AbsolutePath.default('/var/run/docker.sock') }).prefault({}),
});

export type SupervisorConfigInput = z.input<typeof SupervisorConfigSchema>;
export type SupervisorConfig = z.output<typeof SupervisorConfigSchema>;

export function parseSupervisorConfig(input: SupervisorConfigInput): SupervisorConfig {
  const cfg = SupervisorConfigSchema.parse(input);
  const tmpfs = cfg.limits.tmpBytes + cfg.limits.workspaceBytes + cfg.limits.shmBytes;
  if (tmpfs > cfg.limits.memoryBytes / 2) {
    throw new RangeError(
      `limits: tmp + workspace + shm (${tmpfs} bytes) must be at most half of memoryBytes (${cfg.limits.memoryBytes}): they are memory-backed`,
    );
  }
  if (cfg.signingKeys.overlapHours * 3600 < cfg.sessions.tokenTtlSeconds) {
    throw new RangeError('signingKeys.overlapHours must cover sessions.tokenTtlSeconds');
  }
  return cfg;
}

/**
 * The guest memory level at which the agent's watchdog kills the biggest process group (outcome `oom`)
 * before the host's cgroup limit kills the whole sandbox: the limit minus max(96 MiB, 15 %).
 */
export function memorySoftLimit(memoryBytes: number): number {
  return memoryBytes - Math.max(96 * MiB, Math.floor(memoryBytes * 0.15));
}
