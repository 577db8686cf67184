import protobuf from 'protobufjs';

/**
 * Fields and messages that Envoy 1.40 has and the proto set we load (from @grpc/grpc-js-xds) does
 * not. Each entry names the Envoy release that added it and the field number as Envoy's own
 * descriptors give it (read from the pinned binary's embedded FileDescriptorProto), and each is
 * proven by a real-Envoy test (test/e2e/egress-*.test.ts reads it back from /config_dump).
 *
 * Where a whole extension is newer, prefer `xds.type.v3.TypedStruct` (type-urls.ts,
 * NEWER_THAN_PROTOS). A field inside a message that must stay a real message (e.g. a cluster
 * factory's config, which Envoy does not accept as TypedStruct) needs an overlay entry here.
 */

export interface OverlayField {
  /** fully-qualified message the field is added to */
  message: string;
  field: string;
  id: number;
  type: string;
  repeated?: boolean;
  since: string;
}

/** New messages (declared only when the loaded set lacks them). */
const MESSAGES: ReadonlyArray<{ fullName: string; fields: ReadonlyArray<{ name: string; id: number; type: string; repeated?: boolean }>; since: string }> = [
  {
    // envoy/type/matcher/v3/address.proto
    fullName: 'envoy.type.matcher.v3.AddressMatcher',
    fields: [
      { name: 'ranges', id: 1, type: 'xds.core.v3.CidrRange', repeated: true },
      { name: 'invert_match', id: 2, type: 'bool' },
    ],
    since: '1.39',
  },
  {
    // envoy/config/core/v3/cel.proto
    fullName: 'envoy.config.core.v3.CelExpressionConfig',
    fields: [
      { name: 'enable_string_conversion', id: 1, type: 'bool' },
      { name: 'enable_string_concat', id: 2, type: 'bool' },
      { name: 'enable_string_functions', id: 3, type: 'bool' },
    ],
    since: '<=1.40',
  },
];

/** New enums (declared only when the loaded set lacks them). */
const ENUMS: ReadonlyArray<{ fullName: string; values: Record<string, number>; since: string }> = [
  {
    // envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto
    fullName: 'envoy.extensions.filters.network.tcp_proxy.v3.UpstreamConnectMode',
    values: { IMMEDIATE: 0, ON_DOWNSTREAM_DATA: 1, ON_DOWNSTREAM_TLS_HANDSHAKE: 2 },
    since: '<=1.40',
  },
];

export const OVERLAY_FIELDS: readonly OverlayField[] = [
  {
    message: 'envoy.extensions.common.dynamic_forward_proxy.v3.DnsCacheConfig',
    field: 'resolved_address_filter',
    id: 16,
    type: 'envoy.type.matcher.v3.AddressMatcher',
    since: '1.39',
  },
  {
    message: 'envoy.extensions.http.injected_credentials.generic.v3.Generic',
    field: 'header_value_prefix',
    id: 3,
    type: 'string',
    since: '1.37',
  },
  // The egress SNI check (xds-server/translate/sni.ts); test/e2e/egress-sni.test.ts reads each back
  // from /config_dump. Field numbers read from the pinned 1.40 binary's embedded descriptors; where
  // the release that added a field was not checked, `since` says only that 1.40 has it.
  { message: 'envoy.config.rbac.v3.Policy', field: 'cel_config', id: 5, type: 'envoy.config.core.v3.CelExpressionConfig', since: '<=1.40' },
  { message: 'envoy.extensions.filters.http.set_filter_state.v3.Config', field: 'clear_route_cache', id: 2, type: 'bool', since: '1.38' },
  { message: 'envoy.config.route.v3.RouteMatch', field: 'filter_state', id: 16, type: 'envoy.type.matcher.v3.FilterStateMatcher', repeated: true, since: '<=1.40' },
  {
    message: 'envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy',
    field: 'upstream_connect_mode',
    id: 21,
    type: 'envoy.extensions.filters.network.tcp_proxy.v3.UpstreamConnectMode',
    since: '<=1.40',
  },
  { message: 'envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy', field: 'max_early_data_bytes', id: 22, type: 'google.protobuf.UInt32Value', since: '<=1.40' },
  // per-SNI leaves for wildcard bump rules, fetched on demand (xds-server/translate/bump.ts)
  {
    message: 'envoy.extensions.transport_sockets.tls.v3.CommonTlsContext',
    field: 'custom_tls_certificate_selector',
    id: 16,
    type: 'envoy.config.core.v3.TypedExtensionConfig',
    since: '1.37',
  },
];

export function applyOverlay(root: protobuf.Root): void {
  for (const m of MESSAGES) {
    if (root.lookup(m.fullName)) continue;
    const dot = m.fullName.lastIndexOf('.');
    const ns = root.define(m.fullName.slice(0, dot));
    const t = new protobuf.Type(m.fullName.slice(dot + 1));
    for (const f of m.fields) t.add(new protobuf.Field(f.name, f.id, f.type, f.repeated ? 'repeated' : undefined));
    ns.add(t);
  }
  for (const e of ENUMS) {
    if (root.lookup(e.fullName)) continue;
    const dot = e.fullName.lastIndexOf('.');
    root.define(e.fullName.slice(0, dot)).add(new protobuf.Enum(e.fullName.slice(dot + 1), { ...e.values }));
  }
  for (const f of OVERLAY_FIELDS) {
    const t = root.lookupType(f.message);
    if (t.fields[f.field]) continue;
    t.add(new protobuf.Field(f.field, f.id, f.type, f.repeated ? 'repeated' : undefined));
  }
}
