import path from 'node:path';
import { DENY_SET_CIDRS } from './denyset.js';
import { PolicyError, type PolicyIssue } from './errors.js';
import { parseHostPattern } from './hosts.js';
import {
  cmp,
  destinationOrder,
  IR_VERSION,
  toolRuleKey,
  validateIr,
  type Ir,
  type IrCredential,
  type IrDestination,
  type IrSource,
  type IrStorageBackend,
  type IrToolArgument,
  type IrToolRule,
} from './ir.js';
import { loadPolicyFile, loadPolicyText, type LoadedPolicy, type PathSeg } from './loader.js';
import { API_VERSION, parseHostPort, parseListen, type ArgumentPredicate, type Credential, type Policy } from './schema.js';
import { parseDuration, parseSize } from './units.js';

/** Where a policy came from: its display name, the directory relative paths resolve against, lines. */
export interface PolicySource {
  /** the policy file as the user named it (appears in rule sources) */
  file: string;
  /** absolute directory that relative paths in the policy resolve against */
  baseDir: string;
  /** 1-based line of the node at a path; rules get line 1 without it */
  lineOf?: (path: readonly PathSeg[]) => number | undefined;
}

function must<T>(v: T | undefined, what: string): T {
  if (v === undefined) throw new PolicyError('ir_invalid', [{ file: '', line: 0, col: 0, path: '', code: 'ir_schema', message: `internal: ${what}` }]);
  return v;
}

function normalizePathPrefix(v: string): string {
  const n = path.posix.normalize(v);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

function toolArgument(a: ArgumentPredicate): IrToolArgument {
  if (a.equals !== undefined) return { name: a.name, op: 'equals', value: a.equals };
  if (a.oneOf !== undefined) {
    const uniq = [...new Map(a.oneOf.map((x) => [`${typeof x}:${String(x)}`, x])).values()];
    uniq.sort((x, y) => cmp(`${typeof x}:${String(x)}`, `${typeof y}:${String(y)}`));
    return { name: a.name, op: 'oneOf', value: uniq };
  }
  if (a.prefix !== undefined) return { name: a.name, op: 'prefix', value: a.prefix };
  if (a.pathPrefix !== undefined) return { name: a.name, op: 'pathPrefix', value: normalizePathPrefix(a.pathPrefix) };
  return { name: a.name, op: 'maxLength', value: must(a.maxLength, 'predicate without operator') };
}

function uniqSorted(xs: readonly string[]): string[] {
  return [...new Set(xs)].sort(cmp);
}

/**
 * Policy → IR. Pure: the same policy and source always give byte-identical IR. Throws PolicyError
 * (`ir_invalid`) if the result does not pass `validateIr` (which a valid policy never causes).
 */
export function compile(policy: Policy, source: PolicySource): Ir {
  const baseDir = path.resolve(source.baseDir);
  const abs = (p: string) => path.resolve(baseDir, p);
  const src = (p: PathSeg[]): IrSource => ({ file: source.file, line: source.lineOf?.(p) ?? 1 });

  const credentials = new Map<string, Credential>(policy.egress.credentials.map((c) => [c.name, c]));
  const irCredential = (name: string): IrCredential => {
    const c = must(credentials.get(name), `unknown credential ${name}`);
    const s = c.source;
    return {
      name: c.name,
      header: c.header.toLowerCase(),
      format: c.format,
      source: s.sds ? { kind: 'sds', server: s.sds.server, name: s.sds.name } : { kind: 'file', path: abs(must(s.file, 'credential source')) },
    };
  };

  const destinations: IrDestination[] = policy.egress.allow.map((r, i) => {
    const hp = parseHostPattern(r.host);
    if (!hp.ok) throw new PolicyError('ir_invalid', [{ file: source.file, line: 0, col: 0, path: `egress.allow[${i}].host`, code: hp.code, message: hp.message }]);
    const d: IrDestination = {
      host: hp.pattern.host,
      kind: hp.pattern.kind,
      ports: [...new Set(r.ports)].sort((a, b) => a - b),
      rung: r.rung ?? policy.egress.rung,
      source: src(['egress', 'allow', i]),
    };
    if (r.credential !== undefined) d.credential = irCredential(r.credential);
    return d;
  });
  destinations.sort(destinationOrder);

  const backends: IrStorageBackend[] = policy.storage.backends.map((b, i) => {
    const hp = parseHostPattern(b.host);
    if (!hp.ok) throw new PolicyError('ir_invalid', [{ file: source.file, line: 0, col: 0, path: `storage.backends[${i}].host`, code: hp.code, message: hp.message }]);
    return { host: hp.pattern.host, kind: hp.pattern.kind, ports: [...new Set(b.ports)].sort((a, c) => a - c), source: src(['storage', 'backends', i]) };
  });
  backends.sort(destinationOrder);

  const sdsServers = policy.egress.sdsServers
    .map((s) => {
      const hp = must(parseHostPort(s.address), 'sds address');
      return {
        name: s.name,
        host: hp.host,
        port: hp.port,
        ...(s.caFile !== undefined ? { caFile: abs(s.caFile) } : {}),
        ...(s.certFile !== undefined ? { certFile: abs(s.certFile) } : {}),
        ...(s.keyFile !== undefined ? { keyFile: abs(s.keyFile) } : {}),
      };
    })
    .sort((a, b) => cmp(a.name, b.name));

  const rules: IrToolRule[] = policy.mcp.tools.rules.map((r, i) => ({
    effect: r.effect,
    callers: uniqSorted(r.callers),
    tools: uniqSorted(r.tools),
    arguments: [...new Map(r.arguments.map(toolArgument).map((a) => [JSON.stringify([a.name, a.op, a.value]), a])).entries()]
      .sort((x, y) => cmp(x[0], y[0]))
      .map(([, a]) => a),
    source: src(['mcp', 'tools', 'rules', i]),
  }));
  rules.sort((a, b) => cmp(toolRuleKey(a), toolRuleKey(b)));

  const listen = must(parseListen(policy.mcp.listen), 'listen');
  const auth = policy.mcp.auth;
  const t = policy.egress.tripwire;
  const rungLine = source.lineOf?.(['egress', 'rung']);

  const ir: Ir = {
    irVersion: IR_VERSION,
    policy: { apiVersion: API_VERSION, file: source.file },
    deployment: { workloadTrustProfile: policy.deployment.workloadTrustProfile, runtime: policy.deployment.runtime },
    denySet: [...DENY_SET_CIDRS],
    egress: {
      defaultRung: policy.egress.rung,
      ...(rungLine !== undefined ? { defaultRungSource: { file: source.file, line: rungLine } } : {}),
      destinations,
      sdsServers,
      upstreamTrust: policy.egress.upstreamTrust === 'system' ? { kind: 'system' } : { kind: 'file', path: abs(policy.egress.upstreamTrust.caFile) },
      tripwire: {
        bytesPerSession: must(parseSize(t.bytesPerSession), 'bytesPerSession'),
        distinctDestinations: t.distinctDestinations,
        windowSeconds: must(parseDuration(t.window), 'window'),
        onTrip: t.onTrip,
      },
    },
    storage: { backends },
    mcp: {
      listen,
      auth:
        auth.mode === 'local'
          ? { mode: 'local' }
          : {
              mode: 'oidc',
              issuer: auth.issuer,
              audiences: uniqSorted(typeof auth.audience === 'string' ? [auth.audience] : auth.audience),
              jwksUri: auth.jwksUri,
              callerClaim: auth.callerClaim,
            },
      limits: {
        connectionsPerCaller: policy.mcp.limits.connectionsPerCaller,
        requestsPerMinute: policy.mcp.limits.requestsPerMinute,
        maxBodyBytes: must(parseSize(policy.mcp.limits.maxBodyBytes), 'maxBodyBytes'),
      },
      tools: { default: 'deny', rules },
    },
    sessions: {
      tokenTtlSeconds: must(parseDuration(policy.sessions.tokenTtl), 'tokenTtl'),
      idleTimeoutSeconds: must(parseDuration(policy.sessions.idleTimeout), 'idleTimeout'),
      absoluteLifetimeSeconds: must(parseDuration(policy.sessions.absoluteLifetime), 'absoluteLifetime'),
    },
    soar: {
      ...(policy.soar.admin
        ? {
            admin: {
              audience: policy.soar.admin.audience,
              keys: policy.soar.admin.keys
                .map((k, i) => ({ name: k.name, jwksFile: abs(k.jwksFile), source: src(['soar', 'admin', 'keys', i]) }))
                .sort((a, b) => cmp(a.name, b.name)),
            },
          }
        : {}),
      webhooks: policy.soar.webhooks.map((w) => ({ url: w.url, signingKeyFile: abs(w.signingKey.file) })).sort((a, b) => cmp(a.url, b.url)),
    },
    audit: { file: abs(policy.audit.file) },
  };

  const errors = validateIr(ir);
  if (errors.length > 0) {
    const issues: PolicyIssue[] = errors.map((e) => ({ file: source.file, line: 0, col: 0, path: e.path, code: e.code, message: e.message }));
    throw new PolicyError('ir_invalid', issues);
  }
  return ir;
}

/** Compile a policy the loader produced (its lines become rule sources). */
export function compileLoaded(loaded: LoadedPolicy): Ir {
  return compile(loaded.policy, { file: loaded.file, baseDir: loaded.baseDir, lineOf: loaded.lineOf });
}

/** Parse, validate and compile policy text. */
export function compileText(text: string | Uint8Array, opts: { file: string; baseDir?: string }): Ir {
  return compileLoaded(loadPolicyText(text, opts));
}

/** Read, parse, validate and compile a policy file. */
export async function compileFile(file: string, opts: { displayName?: string } = {}): Promise<{ ir: Ir; loaded: LoadedPolicy }> {
  const loaded = await loadPolicyFile(file, opts);
  return { ir: compileLoaded(loaded), loaded };
}
