/**
 * Every Envoy type URL Portcullis uses, in one place. Resource builders, the ADS server, the
 * validator and the tests import from here; nobody spells a type URL inline.
 */

const P = 'type.googleapis.com/';

/**
 * xDS resource types served over ADS (the order they are pushed in is stream.ts PUSH_ORDER). ECDS
 * carries HTTP filter configs a listener names by `config_discovery` (changed without a drain).
 */
export const XDS = {
  cluster: `${P}envoy.config.cluster.v3.Cluster`,
  endpoint: `${P}envoy.config.endpoint.v3.ClusterLoadAssignment`,
  listener: `${P}envoy.config.listener.v3.Listener`,
  route: `${P}envoy.config.route.v3.RouteConfiguration`,
  secret: `${P}envoy.extensions.transport_sockets.tls.v3.Secret`,
  extensionConfig: `${P}envoy.config.core.v3.TypedExtensionConfig`,
} as const;
export type XdsTypeUrl = (typeof XDS)[keyof typeof XDS];
export const XDS_TYPE_URLS: readonly XdsTypeUrl[] = [XDS.cluster, XDS.endpoint, XDS.listener, XDS.route, XDS.secret, XDS.extensionConfig];
/** Wildcard types: every response carries the complete set; anything left out is deleted. */
export const WILDCARD_TYPES: ReadonlySet<XdsTypeUrl> = new Set([XDS.cluster, XDS.listener]);
export const SHORT_NAME: Record<XdsTypeUrl, 'CDS' | 'EDS' | 'LDS' | 'RDS' | 'SDS' | 'ECDS'> = {
  [XDS.cluster]: 'CDS',
  [XDS.endpoint]: 'EDS',
  [XDS.listener]: 'LDS',
  [XDS.route]: 'RDS',
  [XDS.secret]: 'SDS',
  [XDS.extensionConfig]: 'ECDS',
};

export function isXdsTypeUrl(s: string): s is XdsTypeUrl {
  return (XDS_TYPE_URLS as readonly string[]).includes(s);
}

/** Extension configs placed in `typed_config` (checked by the pre-push validator). */
export const EXT = {
  hcm: `${P}envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`,
  tcpProxy: `${P}envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`,
  sniDfp: `${P}envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig`,
  connectionLimit: `${P}envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit`,
  networkRbac: `${P}envoy.extensions.filters.network.rbac.v3.RBAC`,
  networkSetFilterState: `${P}envoy.extensions.filters.network.set_filter_state.v3.Config`,
  tlsInspector: `${P}envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector`,
  router: `${P}envoy.extensions.filters.http.router.v3.Router`,
  httpDfp: `${P}envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig`,
  credentialInjector: `${P}envoy.extensions.filters.http.credential_injector.v3.CredentialInjector`,
  genericCredential: `${P}envoy.extensions.http.injected_credentials.generic.v3.Generic`,
  extAuthz: `${P}envoy.extensions.filters.http.ext_authz.v3.ExtAuthz`,
  extAuthzPerRoute: `${P}envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute`,
  jwtAuthn: `${P}envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication`,
  jwtAuthnPerRoute: `${P}envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig`,
  localRateLimit: `${P}envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`,
  buffer: `${P}envoy.extensions.filters.http.buffer.v3.Buffer`,
  bufferPerRoute: `${P}envoy.extensions.filters.http.buffer.v3.BufferPerRoute`,
  httpRbac: `${P}envoy.extensions.filters.http.rbac.v3.RBAC`,
  httpRbacPerRoute: `${P}envoy.extensions.filters.http.rbac.v3.RBACPerRoute`,
  celAccessLogFilter: `${P}envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter`,
  setFilterState: `${P}envoy.extensions.filters.http.set_filter_state.v3.Config`,
  upstreamCodec: `${P}envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec`,
  headerMutation: `${P}envoy.extensions.filters.http.header_mutation.v3.HeaderMutation`,
  lua: `${P}envoy.extensions.filters.http.lua.v3.Lua`,
  dfpCluster: `${P}envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig`,
  httpProtocolOptions: `${P}envoy.extensions.upstreams.http.v3.HttpProtocolOptions`,
  upstreamTls: `${P}envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext`,
  downstreamTls: `${P}envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext`,
  internalUpstream: `${P}envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport`,
  rawBuffer: `${P}envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer`,
  httpGrpcAccessLog: `${P}envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig`,
  tcpGrpcAccessLog: `${P}envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig`,
  stdoutAccessLog: `${P}envoy.extensions.access_loggers.stream.v3.StdoutAccessLog`,
  fileAccessLog: `${P}envoy.extensions.access_loggers.file.v3.FileAccessLog`,
  internalListenerBootstrap: `${P}envoy.extensions.bootstrap.internal_listener.v3.InternalListener`,
  caresResolver: `${P}envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig`,
  celFormatter: `${P}envoy.extensions.formatter.cel.v3.Cel`,
  typedStruct: `${P}xds.type.v3.TypedStruct`,
} as const;

/**
 * Extensions and fields newer than the proto set we load (Envoy ≥ 1.39). These are sent wrapped in
 * `xds.type.v3.TypedStruct`; Envoy converts them with its own descriptors. Our pre-push validator
 * cannot see inside, so every use has a real-Envoy test.
 */
export const NEWER_THAN_PROTOS = {
  upstreamRbac: `${P}envoy.extensions.filters.http.upstream_rbac.v3.UpstreamRbac`,
  onDemandSecretSelector: `${P}envoy.extensions.transport_sockets.tls.cert_selectors.on_demand_secret.v3.Config`,
} as const;

/** gRPC service paths. */
export const SERVICES = {
  ads: 'envoy.service.discovery.v3.AggregatedDiscoveryService',
  sds: 'envoy.service.secret.v3.SecretDiscoveryService',
  als: 'envoy.service.accesslog.v3.AccessLogService',
  extAuthz: 'envoy.service.auth.v3.Authorization',
} as const;

/**
 * Extension configs that only appear in the bootstrap (overload manager resource monitors). Kept out
 * of `EXT`: they are never pushed over xDS, and Envoy checks them itself at start.
 */
export const BOOTSTRAP_EXT = {
  downstreamConnectionsMonitor: `${P}envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig`,
  fixedHeapMonitor: `${P}envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig`,
} as const;

/** `@type` of each section of Envoy's admin `/config_dump`. */
export const CONFIG_DUMP = {
  bootstrap: `${P}envoy.admin.v3.BootstrapConfigDump`,
  clusters: `${P}envoy.admin.v3.ClustersConfigDump`,
  endpoints: `${P}envoy.admin.v3.EndpointsConfigDump`,
  listeners: `${P}envoy.admin.v3.ListenersConfigDump`,
  routes: `${P}envoy.admin.v3.RoutesConfigDump`,
  secrets: `${P}envoy.admin.v3.SecretsConfigDump`,
  ecds: `${P}envoy.admin.v3.EcdsConfigDump`,
} as const;
