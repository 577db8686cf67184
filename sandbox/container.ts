import type Docker from 'dockerode';
import type { SupervisorConfig } from './config.js';
import type { DockerRuntimeKind } from './admission.js';
import { SANDBOX_CA_BUNDLE, SANDBOX_DEPLOYMENT_CA } from './env.js';
import { AGENT_COMMAND } from './agent/source.js';

/**
 * The container spec of a sandbox (NFR-SEC-14/46), as a pure function of the configuration.
 *
 * - no capability at all (CapDrop ALL, CapAdd empty): the agent and the workload need none — the agent
 *   listens on an unprivileged port, runs as the sandbox user and signals only its own processes;
 * - no-new-privileges; read-only root; /tmp and /workspace are size-capped tmpfs; /dev/shm capped;
 * - memory (no swap), CPU, processes: under runsc guest processes are bounded by RLIMIT_NPROC (gVisor
 *   enforces it per sandbox; the pids cgroup there counts the Sentry's host threads, which get their
 *   own, larger bound); under runc by the pids cgroup;
 * - non-root user 10001; no Docker socket, no host mount except the read-only CA bundle (public
 *   certificates only);
 * - stdin open once: the agent's code and channel key arrive there (see agent/source.ts).
 */

export const SANDBOX_USER = '10001:10001';
export const LABEL_SANDBOX = 'org.portcullis.sandbox';
export const LABEL_INSTANCE = 'org.portcullis.supervisor';
export const LABEL_SANDBOX_ID = 'org.portcullis.sandbox-id';
export const LABEL_POOL = 'org.portcullis.pool';

export interface ContainerSpecInput {
  cfg: SupervisorConfig;
  kind: DockerRuntimeKind;
  sandboxId: string;
  networkName: string;
  env: Record<string, string>;
  /** host paths of the composed bundle and the deployment CA, when a CA is configured */
  caFiles?: { bundle: string; deploymentCa: string };
  pooled: boolean;
}

export function containerName(instanceId: string, sandboxId: string): string {
  return `portcullis-${instanceId}-${sandboxId}`;
}

export function sandboxLabels(instanceId: string, sandboxId: string, pooled: boolean): Record<string, string> {
  return {
    [LABEL_SANDBOX]: '1',
    [LABEL_INSTANCE]: instanceId,
    [LABEL_SANDBOX_ID]: sandboxId,
    ...(pooled ? { [LABEL_POOL]: '1' } : {}),
  };
}

export function buildContainerSpec(i: ContainerSpecInput): Docker.ContainerCreateOptions {
  const { cfg, kind } = i;
  const l = cfg.limits;
  const runtimeName = kind === 'runsc' ? cfg.dockerRuntimes.gvisor : cfg.dockerRuntimes.runc;
  const binds = i.caFiles ? [`${i.caFiles.bundle}:${SANDBOX_CA_BUNDLE}:ro`, `${i.caFiles.deploymentCa}:${SANDBOX_DEPLOYMENT_CA}:ro`] : [];
  const ulimits = [
    { Name: 'nofile', Soft: l.nofile, Hard: l.nofile },
    { Name: 'core', Soft: 0, Hard: 0 },
    ...(kind === 'runsc' ? [{ Name: 'nproc', Soft: l.pids, Hard: l.pids }] : []),
  ];
  return {
    name: containerName(cfg.instanceId, i.sandboxId),
    Image: cfg.image,
    Cmd: [...AGENT_COMMAND],
    Entrypoint: [],
    User: SANDBOX_USER,
    WorkingDir: '/workspace',
    Hostname: 'sandbox',
    Env: Object.entries(i.env).map(([k, v]) => `${k}=${v}`),
    Labels: sandboxLabels(cfg.instanceId, i.sandboxId, i.pooled),
    AttachStdin: true,
    OpenStdin: true,
    StdinOnce: true,
    AttachStdout: false,
    AttachStderr: false,
    Tty: false,
    NetworkDisabled: false,
    StopSignal: 'SIGKILL',
    HostConfig: {
      Runtime: runtimeName,
      NetworkMode: i.networkName,
      CapDrop: ['ALL'],
      CapAdd: [],
      SecurityOpt: ['no-new-privileges:true'],
      ReadonlyRootfs: true,
      Privileged: false,
      Tmpfs: {
        '/tmp': `rw,nosuid,nodev,size=${l.tmpBytes},mode=1777`,
        '/workspace': `rw,nosuid,nodev,size=${l.workspaceBytes},uid=10001,gid=10001,mode=0700`,
      },
      ShmSize: l.shmBytes,
      Memory: l.memoryBytes,
      MemorySwap: l.memoryBytes,
      NanoCpus: Math.round(l.cpus * 1e9),
      PidsLimit: kind === 'runsc' ? l.hostThreads : l.pids,
      Ulimits: ulimits,
      Binds: binds,
      IpcMode: 'private',
      DnsOptions: ['timeout:1', 'attempts:1'],
      RestartPolicy: { Name: 'no', MaximumRetryCount: 0 },
      AutoRemove: false,
      Init: false,
      OomKillDisable: false,
      LogConfig: { Type: 'json-file', Config: { 'max-size': '1m', 'max-file': '1' } },
    },
    NetworkingConfig: { EndpointsConfig: { [i.networkName]: {} } },
  };
}
