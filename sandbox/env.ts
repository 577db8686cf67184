/**
 * The sandbox environment (NFR-SEC-75): built from an allowlist, never inherited from the host.
 * Names matching the mandatory deny patterns (and the configured ones) are stripped even when an
 * allowlist entry would admit them. Matching is case-insensitive: `my_token` is as secret as `MY_TOKEN`.
 */

/** Always applied, whatever the configuration says. */
export const MANDATORY_ENV_DENY: readonly string[] = ['*_TOKEN', '*_SECRET', '*_PASSWORD', '*API_KEY*'];

/** Set by the supervisor; a caller cannot add or override them. */
export const RESERVED_ENV: readonly string[] = [
  'HTTP_PROXY',
  'HTTPS_PROXY',
  'http_proxy',
  'https_proxy',
  'NO_PROXY',
  'no_proxy',
  'ALL_PROXY',
  'all_proxy',
  'SSL_CERT_FILE',
  'SSL_CERT_DIR',
  'NODE_EXTRA_CA_CERTS',
  'REQUESTS_CA_BUNDLE',
  'CURL_CA_BUNDLE',
  'GIT_SSL_CAINFO',
  'PIP_CERT',
  'HOME',
  'USER',
  'LD_PRELOAD',
  'LD_LIBRARY_PATH',
  'LD_AUDIT',
];

const NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function isValidEnvName(name: string): boolean {
  return name.length <= 256 && NAME_RE.test(name);
}

/** `*` matches any run of characters (including none); everything else is literal. */
export function envPatternToRegExp(pattern: string): RegExp {
  const body = pattern
    .split('*')
    .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${body}$`, 'i');
}

export class EnvPolicy {
  private readonly allow: RegExp[];
  private readonly deny: RegExp[];
  private readonly reserved: Set<string>;

  constructor(opts: { allow: readonly string[]; denyPatterns?: readonly string[]; reserved?: readonly string[] }) {
    this.allow = opts.allow.map(envPatternToRegExp);
    this.deny = [...MANDATORY_ENV_DENY, ...(opts.denyPatterns ?? [])].map(envPatternToRegExp);
    this.reserved = new Set((opts.reserved ?? RESERVED_ENV).map((n) => n.toUpperCase()));
  }

  /** The deny patterns (mandatory + configured), as given to the in-sandbox agent. */
  static denyPatterns(extra: readonly string[] = []): string[] {
    return [...MANDATORY_ENV_DENY, ...extra];
  }

  isDenied(name: string): boolean {
    return this.deny.some((re) => re.test(name));
  }

  isReserved(name: string): boolean {
    return this.reserved.has(name.toUpperCase());
  }

  isAllowed(name: string): boolean {
    return this.allow.some((re) => re.test(name));
  }

  /**
   * Filters a caller's additions. Returns the kept variables and, for each stripped one, its name and
   * why (never its value).
   */
  filter(vars: Readonly<Record<string, string>> | undefined): { env: Record<string, string>; stripped: StrippedEnv[] } {
    const env: Record<string, string> = {};
    const stripped: StrippedEnv[] = [];
    for (const [name, value] of Object.entries(vars ?? {})) {
      let reason: StrippedEnv['reason'] | undefined;
      if (!isValidEnvName(name) || typeof value !== 'string' || value.includes('\0')) reason = 'invalid';
      else if (this.isDenied(name)) reason = 'denied_pattern';
      else if (this.isReserved(name)) reason = 'reserved';
      else if (!this.isAllowed(name)) reason = 'not_allowed';
      if (reason) stripped.push({ name: isValidEnvName(name) ? name : '(invalid name)', reason });
      else env[name] = value;
    }
    return { env, stripped };
  }
}

export interface StrippedEnv {
  name: string;
  reason: 'invalid' | 'denied_pattern' | 'reserved' | 'not_allowed';
}

/** Where the trust store lives in the sandbox (bind-mounted read-only, see container.ts). */
export const SANDBOX_CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';
export const SANDBOX_DEPLOYMENT_CA = '/usr/local/share/ca-certificates/portcullis-deployment-ca.crt';

/**
 * The sandbox's base environment (the container's Config.Env): nothing from the host, no credential.
 * The proxy variables carry no credential here; the agent adds the session credential per process.
 */
export function baseSandboxEnv(opts: { hasDeploymentCa: boolean }): Record<string, string> {
  const env: Record<string, string> = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: '/home/sandbox',
    USER: 'sandbox',
    LANG: 'C.UTF-8',
    TMPDIR: '/tmp',
    XDG_CACHE_HOME: '/tmp/.cache',
    PYTHONDONTWRITEBYTECODE: '1',
    // Resolver: fail fast. No name is meant to resolve inside the sandbox; the proxy resolves.
    RES_OPTIONS: 'timeout:1 attempts:1',
    SSL_CERT_FILE: SANDBOX_CA_BUNDLE,
    REQUESTS_CA_BUNDLE: SANDBOX_CA_BUNDLE,
    CURL_CA_BUNDLE: SANDBOX_CA_BUNDLE,
    GIT_SSL_CAINFO: SANDBOX_CA_BUNDLE,
    PIP_CERT: SANDBOX_CA_BUNDLE,
  };
  if (opts.hasDeploymentCa) env.NODE_EXTRA_CA_CERTS = SANDBOX_DEPLOYMENT_CA;
  return env;
}

/**
 * Proxy variables for one session: the Envoy egress listener at the session network's gateway, the
 * session credential as the proxy password (`Proxy-Authorization: Basic`, user `session`).
 */
export function proxyEnv(gateway: string, port: number, credential: string | null): Record<string, string> {
  const auth = credential === null ? '' : `session:${encodeURIComponent(credential)}@`;
  const url = `http://${auth}${gateway}:${port}`;
  const noProxy = 'localhost,127.0.0.1,::1';
  return {
    HTTP_PROXY: url,
    HTTPS_PROXY: url,
    http_proxy: url,
    https_proxy: url,
    NO_PROXY: noProxy,
    no_proxy: noProxy,
  };
}
