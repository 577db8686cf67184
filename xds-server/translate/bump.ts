import type { Ir, IrDestination } from '../../policy/ir.js';
import { EXT, NEWER_THAN_PROTOS } from '../../envoy/api/type-urls.js';
import { PortcullisError } from '../../common/errors.js';
import {
  ADS_SOURCE,
  celResponseFilter,
  denyReplyMapper,
  denyRoute,
  grpcAccessLog,
  resolvedIpDeniedReply,
  routerFilter,
  SESSION_FILTER_STATE,
  SESSION_HEADER,
  typedStruct,
} from './common.js';
import { CEL_STRING_FEATURES, celBuilder } from './cel.js';
import type { SessionDenialEntry } from '../sessions.js';
import { SESSION_CHECK, SESSION_EXPIRY_FILTER, sessionExpiryFilter, sessionRequirement } from './session-check.js';
import { dnsCacheConfig, type EgressOptions } from './egress.js';

/**
 * The `bump` and `external-sds` rungs.
 *
 * Listener A (the egress listener) terminates the guest's CONNECT for a bump destination after its
 * session check accepted the tunnel's session token (session-check.ts), records the session, the
 * token's expiry and the CONNECT authority in filter state shared with the upstream connection, and
 * routes the tunnel to the internal listener B (`egress_bump`).
 *
 * B terminates the guest's TLS with a leaf for the SNI (minted by sds-minter, served over SDS as
 * `leaf:<host>` for an exact host; for a wildcard rule Envoy's on-demand certificate selector asks
 * for the SNI itself as the secret name during the handshake, and the control plane mints a leaf
 * that covers it at any depth); a filter chain exists only for bump hosts, so any other SNI gets no
 * handshake. Every request inside the tunnel is checked by Envoy alone — no call leaves Envoy on the
 * request path:
 *  - an RBAC condition (CEL): the Host must be the SNI, which must be the CONNECT authority's host,
 *    on the authority's port (`sni_mismatch`);
 *  - an RBAC DENY condition (CEL): the token that opened the tunnel has expired, by Envoy's clock
 *    (`session_expired`);
 *  - the chain's routes (RDS `bump:<host>`) refuse a session the control plane has revoked
 *    (`session_revoked`, `exfil_budget_exceeded`): a deny route per session, matched on the session
 *    A recorded, published again whenever that list changes, so a revoked session is cut at its next
 *    request once Envoy has the routes (no listener drains);
 *  - a tunnel without a recorded session gets `session_credential_missing`.
 * Then it forwards through a per-destination dynamic forward proxy cluster that re-originates TLS
 * with strict validation (auto SNI + SAN check against the policy's trust) and injects the
 * credential as an upstream HTTP filter, overwriting whatever the guest sent. A refused request
 * never reaches the router's upstream, so it never gets the credential.
 */

export const BUMP = {
  listener: 'egress_bump',
  tunnelCluster: 'egress_bump_tunnel',
  sessionKey: SESSION_FILTER_STATE,
  authorityKey: 'portcullis.authority',
  sessionHeader: SESSION_HEADER,
  authorityHeader: 'x-portcullis-authority',
  dnsCache: 'egress_dns',
  /** the RBAC policy of B's per-request check (Host = SNI = the CONNECT authority) */
  hostPolicy: 'host-is-sni-is-authority',
} as const;

export const SYSTEM_TRUST_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';

export interface BumpOptions {
  /** cluster of the control plane's gRPC server (a bootstrap static cluster: ALS, SDS) */
  controlPlaneCluster: string;
  /** SDS name of the leaf for a bump host (`leaf:<host>`); the control plane puts it in the snapshot */
  leafSecretName?: (host: string) => string;
}

export function isBumped(d: IrDestination): boolean {
  return d.rung === 'bump' || d.rung === 'external-sds';
}

export const leafSecretName = (host: string): string => `leaf:${host}`;

/** The secret name the on-demand selector asks for when a ClientHello carries no SNI (never served). */
export const NO_SNI_SECRET = 'no-sni.invalid';
const SNI_MAPPER = 'type.googleapis.com/envoy.extensions.transport_sockets.tls.cert_mappers.sni.v3.SNI';

/**
 * TLS certificate for a wildcard bump rule: fetched per SNI during the handshake (SDS over ADS,
 * secret name = the SNI), so `a.b.example.com` under `*.example.com` gets a leaf that covers it.
 */
export function onDemandCertificate(): Record<string, unknown> {
  return {
    name: 'envoy.tls.certificate_selectors.on_demand_secret',
    typed_config: typedStruct(NEWER_THAN_PROTOS.onDemandSecretSelector, {
      config_source: ADS_SOURCE,
      certificate_mapper: { name: 'envoy.tls.certificate_mappers.sni', typed_config: { '@type': SNI_MAPPER, default_value: NO_SNI_SECRET } },
    }),
  };
}
export const credentialSecretName = (name: string): string => `cred:${name}`;
export const bumpClusterName = (host: string): string => `bump:${host}`;

/** A's filter that records the session and its token's expiry (from the session check) and the CONNECT authority for B. */
export function tunnelFilterState(): Record<string, unknown> {
  const value = (key: string, fmt: string) => ({
    object_key: key,
    factory_key: 'envoy.string',
    format_string: { text_format_source: { inline_string: fmt } },
    read_only: true,
    shared_with_upstream: 'ONCE',
    skip_if_empty: true,
  });
  return {
    name: 'envoy.filters.http.set_filter_state',
    typed_config: {
      '@type': EXT.setFilterState,
      on_request_headers: [
        value(BUMP.sessionKey, `%REQ(${BUMP.sessionHeader})%`),
        value(SESSION_CHECK.expKey, `%REQ(${SESSION_CHECK.expHeader})%`),
        value(BUMP.authorityKey, '%REQ(:authority)%'),
      ],
    },
  };
}

/** A's virtual host for a bump destination: CONNECT (the tunnel's session checked) into B. */
export function bumpVirtualHost(host: string, domains: string[], o: EgressOptions): Record<string, unknown> {
  return {
    name: `dest:${host}:bump`,
    domains,
    typed_per_filter_config: sessionRequirement(true),
    routes: [
      {
        match: { connect_matcher: {} },
        route: {
          cluster: BUMP.tunnelCluster,
          upgrade_configs: [{ upgrade_type: 'CONNECT', connect_config: {} }],
          timeout: '0s',
          max_stream_duration: { max_stream_duration: `${o.maxTunnelSeconds ?? 3600}s` },
        },
      },
      // plain http:// to a bump destination would carry the credential in clear: refused
      denyRoute({ prefix: '' }, 'destination_not_allowed'),
    ],
  };
}

export function bumpResources(ir: Ir, o: EgressOptions, b: BumpOptions, denials: readonly SessionDenialEntry[] = []) {
  const dests = ir.egress.destinations.filter(isBumped);
  if (!dests.length || ir.egress.defaultRung === 'deny-all') return { listeners: [], routes: [], clusters: [] };
  const cache = dnsCacheConfig(BUMP.dnsCache, ir.denySet, o.dnsResolvers, o.dnsRefreshSeconds);
  const trustedCa = ir.egress.upstreamTrust.kind === 'file' ? ir.egress.upstreamTrust.path : SYSTEM_TRUST_BUNDLE;
  const leafName = b.leafSecretName ?? leafSecretName;

  const byHost = new Map<string, IrDestination[]>();
  for (const d of dests) byHost.set(d.host, [...(byHost.get(d.host) ?? []), d]);

  const chains = [...byHost.keys()].map((host) => {
    return {
      name: `bump:${host}`,
      filter_chain_match: { server_names: [host] },
      transport_socket: {
        name: 'envoy.transport_sockets.tls',
        typed_config: {
          '@type': EXT.downstreamTls,
          // on-demand certificates cannot be combined with TLS session resumption (Envoy refuses it)
          ...(host.startsWith('*.') ? { disable_stateless_session_resumption: true, disable_stateful_session_resumption: true } : {}),
          common_tls_context: {
            ...(host.startsWith('*.')
              ? { custom_tls_certificate_selector: onDemandCertificate() }
              : { tls_certificate_sds_secret_configs: [{ name: leafName(host), sds_config: ADS_SOURCE }] }),
            alpn_protocols: ['http/1.1'],
            tls_params: { tls_minimum_protocol_version: 'TLSv1_2' },
          },
        },
      },
      filters: [
        {
          name: 'envoy.filters.network.http_connection_manager',
          typed_config: {
            '@type': EXT.hcm,
            stat_prefix: 'egress_bump',
            codec_type: 'HTTP1',
            normalize_path: true,
            merge_slashes: true,
            path_with_escaped_slashes_action: 'REJECT_REQUEST',
            request_headers_timeout: '10s',
            stream_idle_timeout: '300s',
            common_http_protocol_options: { idle_timeout: '300s', headers_with_underscores_action: 'REJECT_REQUEST' },
            // Host is compared as the guest sent it, but for a trailing dot (A strips it from the authority)
            strip_trailing_host_dot: true,
            ...(o.accessLogCluster ? { access_log: [grpcAccessLog(BUMP.listener, o.accessLogCluster)] } : {}),
            rds: { route_config_name: bumpRoutesName(host), config_source: ADS_SOURCE },
            http_filters: [
              {
                // The session and CONNECT authority recorded by listener A, never what the guest sends
                // (for the access log; the routes remove both before anything goes upstream).
                name: 'envoy.filters.http.header_mutation',
                typed_config: {
                  '@type': EXT.headerMutation,
                  mutations: {
                    request_mutations: [
                      { append: { header: { key: BUMP.sessionHeader, value: `%FILTER_STATE(${BUMP.sessionKey}:PLAIN)%` }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' } },
                      { append: { header: { key: BUMP.authorityHeader, value: `%FILTER_STATE(${BUMP.authorityKey}:PLAIN)%` }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' } },
                    ],
                  },
                },
              },
              sessionExpiryFilter(),
              hostCheckFilter(),
              { name: 'envoy.filters.http.dynamic_forward_proxy', typed_config: { '@type': EXT.httpDfp, dns_cache_config: cache } },
              routerFilter(),
            ],
            local_reply_config: bumpLocalReply(),
          },
        },
      ],
    };
  });

  const listenerB = {
    name: BUMP.listener,
    internal_listener: {},
    listener_filters: [{ name: 'envoy.filters.listener.tls_inspector', typed_config: { '@type': EXT.tlsInspector } }],
    listener_filters_timeout: '5s',
    filter_chains: chains,
  };

  const tunnel = {
    name: BUMP.tunnelCluster,
    connect_timeout: '2s',
    type: 'STATIC',
    load_assignment: {
      cluster_name: BUMP.tunnelCluster,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { envoy_internal_address: { server_listener_name: BUMP.listener } } } }] }],
    },
    transport_socket: {
      name: 'envoy.transport_sockets.internal_upstream',
      typed_config: {
        '@type': EXT.internalUpstream,
        transport_socket: { name: 'envoy.transport_sockets.raw_buffer', typed_config: { '@type': EXT.rawBuffer } },
      },
    },
  };

  const upstreams = [...byHost.entries()].map(([host, ds]) => {
    const cred = ds.find((d) => d.credential)?.credential;
    const filters: Array<Record<string, unknown>> = [];
    if (cred) {
      const secretRef =
        cred.source.kind === 'file'
          ? { name: credentialSecretName(cred.name), sds_config: ADS_SOURCE }
          : {
              // external-sds: the customer's SDS server holds the credential; Portcullis never sees it
              name: cred.source.name,
              sds_config: {
                api_config_source: { api_type: 'GRPC', transport_api_version: 'V3', grpc_services: [{ envoy_grpc: { cluster_name: sdsClusterName(cred.source.server) } }] },
                resource_api_version: 'V3',
                initial_fetch_timeout: '5s',
              },
            };
      filters.push({
        name: 'envoy.filters.http.credential_injector',
        typed_config: {
          '@type': EXT.credentialInjector,
          // default false keeps the guest's header: the injected credential must win
          overwrite: true,
          allow_request_without_credential: false,
          credential: {
            name: 'envoy.http.injected_credentials.generic',
            typed_config: {
              '@type': EXT.genericCredential,
              credential: secretRef,
              header: cred.header,
              ...(cred.source.kind === 'sds' ? sdsValuePrefix(cred.name, cred.format) : {}),
            },
          },
        },
      });
    }
    filters.push({ name: 'envoy.filters.http.upstream_codec', typed_config: { '@type': EXT.upstreamCodec } });
    return {
      name: bumpClusterName(host),
      connect_timeout: '5s',
      lb_policy: 'CLUSTER_PROVIDED',
      cluster_type: { name: 'envoy.clusters.dynamic_forward_proxy', typed_config: { '@type': EXT.dfpCluster, dns_cache_config: cache } },
      typed_extension_protocol_options: {
        'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
          '@type': EXT.httpProtocolOptions,
          upstream_http_protocol_options: { auto_sni: true, auto_san_validation: true },
          explicit_http_config: { http_protocol_options: {} },
          http_filters: filters,
        },
      },
      transport_socket: {
        name: 'envoy.transport_sockets.tls',
        typed_config: {
          '@type': EXT.upstreamTls,
          common_tls_context: {
            tls_params: { tls_minimum_protocol_version: 'TLSv1_2' },
            validation_context: { trusted_ca: { filename: trustedCa } },
          },
        },
      },
    };
  });

  const sdsClusters = ir.egress.sdsServers.map((srv) => ({
    name: sdsClusterName(srv.name),
    connect_timeout: '2s',
    type: 'STRICT_DNS',
    dns_lookup_family: 'V4_PREFERRED',
    load_assignment: {
      cluster_name: sdsClusterName(srv.name),
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: srv.host, port_value: srv.port } } } }] }],
    },
    typed_extension_protocol_options: {
      'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': { '@type': EXT.httpProtocolOptions, explicit_http_config: { http2_protocol_options: {} } },
    },
    ...(srv.caFile
      ? {
          transport_socket: {
            name: 'envoy.transport_sockets.tls',
            typed_config: {
              '@type': EXT.upstreamTls,
              sni: srv.host,
              common_tls_context: {
                validation_context: { trusted_ca: { filename: srv.caFile }, match_typed_subject_alt_names: [{ san_type: 'DNS', matcher: { exact: srv.host } }] },
                ...(srv.certFile && srv.keyFile
                  ? { tls_certificates: [{ certificate_chain: { filename: srv.certFile }, private_key: { filename: srv.keyFile } }] }
                  : {}),
              },
            },
          },
        }
      : {}),
  }));

  const routes = [...byHost.entries()].map(([host, ds]) => bumpRoutes(host, bumpDomains(host, ds), denials));
  return { listeners: [listenerB], routes, clusters: [tunnel, ...upstreams, ...sdsClusters] };
}

export const sdsClusterName = (server: string): string => `sds:${server}`;

/** RDS name of a bump chain's routes. */
export const bumpRoutesName = (host: string): string => `bump:${host}`;

/** The Host forms a bump chain serves: the host, and `host:port` for each allowed port. */
function bumpDomains(host: string, ds: readonly IrDestination[]): string[] {
  const ports = [...new Set(ds.flatMap((d) => d.ports))];
  return [host, ...ports.map((p) => `${host}:${p}`)];
}

/** RBAC off (a route that answers by itself, before B's per-request expiry and host checks). */
const RBAC_OFF = {
  'envoy.filters.http.rbac': { '@type': EXT.httpRbacPerRoute },
  [SESSION_EXPIRY_FILTER]: { '@type': EXT.httpRbacPerRoute },
};

/**
 * B's routes for one bump host (RDS, so a change never drains the tunnels): first a deny route per
 * revoked or expired session (matched on the session listener A recorded for the tunnel; RBAC is
 * off there so the session's own reason wins), then the forward route for a tunnel that carries a
 * session, then `session_credential_missing`. Any other Host is `sni_mismatch`.
 */
export function bumpRoutes(host: string, domains: string[], denials: readonly SessionDenialEntry[]): { name: string; virtual_hosts: unknown[] } {
  const sessionIs = (string_match: Record<string, unknown>) => ({ prefix: '', filter_state: [{ key: BUMP.sessionKey, string_match }] });
  return {
    name: bumpRoutesName(host),
    virtual_hosts: [
      {
        name: host,
        domains,
        routes: [
          ...denials.map((d) => ({ ...denyRoute(sessionIs({ exact: d.sessionId }), d.reason, `deny:${d.reason}`), typed_per_filter_config: RBAC_OFF })),
          {
            name: 'forward',
            match: sessionIs({ safe_regex: { regex: '.+' } }),
            route: { cluster: bumpClusterName(host), timeout: '60s' },
            request_headers_to_remove: [BUMP.sessionHeader, BUMP.authorityHeader, 'proxy-authorization'],
          },
          denyRoute({ prefix: '' }, 'session_credential_missing', 'deny:session_credential_missing'),
        ],
      },
      // Host must be the SNI: a tunnel to one name cannot carry requests for another
      { name: 'host-not-sni', domains: ['*'], routes: [denyRoute({ prefix: '' }, 'sni_mismatch', 'deny:sni_mismatch')] },
    ],
  };
}

/**
 * `H == A && A.startsWith(S + ':')  ||  H == S && A == S + ':443'` with H = the request's Host, A =
 * the CONNECT authority A recorded, S = the TLS SNI, all lower-cased (trailing dots are stripped
 * from H and A by their connection managers). So the Host names the SNI, the SNI is the authority's
 * host, and the Host's port is the authority's (a bare Host means 443). A missing authority is a CEL
 * error, which RBAC treats as no match: refused.
 */
export function hostIsSniCondition(): Record<string, unknown> {
  const cel = celBuilder();
  const host = () => cel.call('lowerAscii', [], cel.select(cel.ident('request'), 'host'));
  const authority = () => cel.filterStateLower(BUMP.authorityKey);
  const sni = () => cel.sniLower();
  return cel.or(
    cel.and(cel.eq(host(), authority()), cel.call('startsWith', [cel.concat(sni(), cel.str(':'))], authority())),
    cel.and(cel.eq(host(), sni()), cel.eq(authority(), cel.concat(sni(), cel.str(':443')))),
  );
}

/** B's per-request check, in Envoy: Host = SNI = the CONNECT authority, or `sni_mismatch`. */
function hostCheckFilter(): Record<string, unknown> {
  return {
    name: 'envoy.filters.http.rbac',
    typed_config: {
      '@type': EXT.httpRbac,
      rules: {
        action: 'ALLOW',
        policies: {
          [BUMP.hostPolicy]: { permissions: [{ any: true }], principals: [{ any: true }], condition: hostIsSniCondition(), cel_config: CEL_STRING_FEATURES },
        },
      },
    },
  };
}

/** B's local replies: RBAC's refusal carries its reason like every other denial; then the deny-set reply. */
function bumpLocalReply(): Record<string, unknown> {
  const rbacRefused = celResponseFilter("response.code_details.startsWith('rbac_access_denied')");
  const expired = celResponseFilter("response.code_details == 'rbac_access_denied_matched_policy[session_expired]'");
  return { mappers: [denyReplyMapper(expired, 'session_expired'), denyReplyMapper(rbacRefused, 'sni_mismatch'), ...resolvedIpDeniedReply().mappers] };
}

/**
 * A credential from a customer SDS server is injected as Envoy receives it: Portcullis never sees
 * the value, so the policy's format can only add a prefix (`token {secret}`), which Envoy applies
 * (`header_value_prefix`, Envoy ≥ 1.37, envoy/api/overlay.ts). A suffix cannot be honoured.
 */
export function sdsValuePrefix(name: string, format: string): { header_value_prefix?: string } {
  const i = format.indexOf('{secret}');
  if (format.slice(i + '{secret}'.length) !== '') {
    throw new PortcullisError('resource_invalid', `credential "${name}" comes from an external SDS server: its format can only put text before {secret}`);
  }
  const prefix = format.slice(0, i);
  return prefix ? { header_value_prefix: prefix } : {};
}

/** Secrets a bumped destination needs, by name (the control plane supplies their content). */
export function bumpSecretNames(ir: Ir): {
  /** exact bump hosts: their `leaf:<host>` secrets are minted ahead of time and put in the snapshot */
  leaves: string[];
  /** every bump host and wildcard: what the minter may issue leaves for */
  mintable: string[];
  credentials: Array<{ name: string; secret: string; kind: 'file' | 'sds' }>;
} {
  const dests = ir.egress.destinations.filter(isBumped);
  const mintable = [...new Set(dests.map((d) => d.host))].sort();
  // wildcard rules: leaves are made per SNI on demand (onDemandCertificate), none ahead of time
  const leaves = mintable.filter((h) => !h.startsWith('*.'));
  const creds = new Map<string, { name: string; secret: string; kind: 'file' | 'sds' }>();
  for (const d of dests) {
    if (d.credential) creds.set(d.credential.name, { name: d.credential.name, secret: credentialSecretName(d.credential.name), kind: d.credential.source.kind });
  }
  return { leaves, mintable, credentials: [...creds.values()] };
}
