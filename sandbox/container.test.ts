import { describe, expect, it } from 'vitest';
import { AGENT_BOOTSTRAP, AGENT_COMMAND, agentStdinPayload } from './agent/source.js';
import { memorySoftLimit, parseSupervisorConfig } from './config.js';
import { buildContainerSpec, LABEL_INSTANCE, LABEL_SANDBOX_ID } from './container.js';
import { baseSandboxEnv } from './env.js';
import { firstTarFile } from './supervisor.js';

const MiB = 1 << 20;
const cfg = parseSupervisorConfig({
  instanceId: 'unit',
  trustProfile: 'trusted_operator',
  runtime: 'gvisor',
  image: 'portcullis-sandbox:test',
  sessions: { tokenTtlSeconds: 900, idleTimeoutSeconds: 600, absoluteLifetimeSeconds: 3600 },
  egress: { port: 15001 },
  limits: { memoryBytes: 512 * MiB, pids: 128, hostThreads: 1024, tmpBytes: 32 * MiB, workspaceBytes: 64 * MiB },
});

function spec(kind: 'runsc' | 'runc', caFiles?: { bundle: string; deploymentCa: string }) {
  return buildContainerSpec({ cfg, kind, sandboxId: 'abcdef012345', networkName: 'portcullis-unit-abcdef012345', env: baseSandboxEnv({ hasDeploymentCa: !!caFiles }), pooled: false, ...(caFiles ? { caFiles } : {}) });
}

describe('container spec hardening (NFR-SEC-14/46)', () => {
  const s = spec('runsc');
  const h = s.HostConfig!;

  it('drops every capability and adds none back', () => {
    expect(h.CapDrop).toEqual(['ALL']);
    expect(h.CapAdd ?? []).toEqual([]);
    expect(h.Privileged).toBe(false);
  });

  it('no-new-privileges, read-only root, non-root user', () => {
    expect(h.SecurityOpt).toContain('no-new-privileges:true');
    expect(h.SecurityOpt?.some((o: string) => /seccomp[=:]unconfined|apparmor[=:]unconfined/.test(o))).toBe(false);
    expect(h.ReadonlyRootfs).toBe(true);
    expect(s.User).toBe('10001:10001');
  });

  it('size-capped tmpfs for /tmp and the workspace, capped /dev/shm', () => {
    expect(h.Tmpfs?.['/tmp']).toMatch(new RegExp(`size=${32 * MiB}(,|$)`));
    expect(h.Tmpfs?.['/workspace']).toMatch(new RegExp(`size=${64 * MiB}(,|$)`));
    expect(h.Tmpfs?.['/workspace']).toMatch(/uid=10001/);
    expect(h.ShmSize).toBe(cfg.limits.shmBytes);
  });

  it('memory without swap, CPU, processes', () => {
    expect(h.Memory).toBe(512 * MiB);
    expect(h.MemorySwap).toBe(512 * MiB);
    expect(h.NanoCpus).toBe(1e9);
    // runsc: guest processes via RLIMIT_NPROC (gVisor enforces it), host threads via the pids cgroup
    expect(h.Ulimits).toContainEqual({ Name: 'nproc', Soft: 128, Hard: 128 });
    expect(h.PidsLimit).toBe(1024);
    const runc = spec('runc').HostConfig!;
    expect(runc.PidsLimit).toBe(128);
    expect(runc.Runtime).toBe('runc');
    expect(h.Runtime).toBe('runsc');
    expect(h.Ulimits).toContainEqual({ Name: 'core', Soft: 0, Hard: 0 });
  });

  it('mounts nothing from the host but the CA files, read-only; never the Docker socket', () => {
    expect(h.Binds).toEqual([]);
    const withCa = spec('runsc', { bundle: '/run/x/ca-bundle.pem', deploymentCa: '/run/x/deployment-ca.pem' }).HostConfig!;
    expect(withCa.Binds).toEqual([
      '/run/x/ca-bundle.pem:/etc/ssl/certs/ca-certificates.crt:ro',
      '/run/x/deployment-ca.pem:/usr/local/share/ca-certificates/portcullis-deployment-ca.crt:ro',
    ]);
    expect(JSON.stringify(s)).not.toMatch(/docker\.sock/);
    expect(h.Mounts ?? []).toEqual([]);
    expect(h.Devices ?? []).toEqual([]);
  });

  it('on its own network only; labelled for orphan cleanup', () => {
    expect(h.NetworkMode).toBe('portcullis-unit-abcdef012345');
    expect(Object.keys(s.NetworkingConfig?.EndpointsConfig ?? {})).toEqual(['portcullis-unit-abcdef012345']);
    expect(s.Labels?.[LABEL_INSTANCE]).toBe('unit');
    expect(s.Labels?.[LABEL_SANDBOX_ID]).toBe('abcdef012345');
  });

  it('carries no host environment and no secret on argv', () => {
    process.env.UPSTREAM_API_KEY = 'sk-host-secret';
    try {
      const again = spec('runsc');
      expect(JSON.stringify(again)).not.toContain('sk-host-secret');
      expect(again.Cmd).toEqual([...AGENT_COMMAND]);
      expect(AGENT_BOOTSTRAP).not.toMatch(/key/i);
    } finally {
      delete process.env.UPSTREAM_API_KEY;
    }
  });

  it('the agent key travels on stdin only', () => {
    const payload = agentStdinPayload({ key: 'S0VZ', port: 7070, hostAddr: '198.18.1.1', baseEnv: {}, denyPatterns: [], reserved: [], memSoftLimit: 1 }).toString();
    const [len, ...rest] = payload.split('\n');
    expect(Number(len)).toBeGreaterThan(1000);
    expect(rest.join('\n')).toMatch(/"key":"S0VZ"/);
  });
});

describe('config', () => {
  it('refuses memory-backed surfaces above half the memory', () => {
    expect(() =>
      parseSupervisorConfig({ ...cfgInput(), limits: { memoryBytes: 256 * MiB, tmpBytes: 64 * MiB, workspaceBytes: 128 * MiB } }),
    ).toThrow(/half of memoryBytes/);
  });
  it('refuses a token TTL above 60 min and a key rotation above 90 days', () => {
    expect(() => parseSupervisorConfig({ ...cfgInput(), sessions: { tokenTtlSeconds: 3601, idleTimeoutSeconds: 60, absoluteLifetimeSeconds: 60 } })).toThrow();
    expect(() => parseSupervisorConfig({ ...cfgInput(), signingKeys: { rotateEveryHours: 91 * 24 } })).toThrow();
  });
  it('the OOM watchdog level leaves headroom below the cgroup limit', () => {
    expect(memorySoftLimit(512 * MiB)).toBe(416 * MiB);
    expect(memorySoftLimit(4096 * MiB)).toBe(4096 * MiB - Math.floor(4096 * MiB * 0.15));
  });
});

function cfgInput() {
  return {
    trustProfile: 'trusted_operator' as const,
    runtime: 'gvisor' as const,
    image: 'i',
    sessions: { tokenTtlSeconds: 900, idleTimeoutSeconds: 600, absoluteLifetimeSeconds: 3600 },
    egress: { port: 15001 },
  };
}

describe('firstTarFile', () => {
  it('reads the first regular file of a tar stream', () => {
    const header = Buffer.alloc(512);
    header.write('ca-certificates.crt', 0);
    header.write('0000000005\0', 124);
    header.write('0', 156);
    const body = Buffer.alloc(512);
    body.write('hello');
    expect(firstTarFile(Buffer.concat([header, body, Buffer.alloc(1024)])).toString()).toBe('hello');
    expect(() => firstTarFile(Buffer.alloc(1024))).toThrow(/no regular file/);
  });
});
