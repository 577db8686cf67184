import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import protobuf from 'protobufjs';
import { applyOverlay } from './overlay.js';

/**
 * Envoy's v3 API protos, loaded from the maintained copy that ships in `@grpc/grpc-js-xds`
 * (deps/envoy-api, deps/xds, deps/googleapis, deps/protoc-gen-validate). We never copy .proto
 * files into this project. The set predates Envoy 1.39; newer extension configs travel as
 * `xds.type.v3.TypedStruct` (see type-urls.ts).
 */

const require = createRequire(import.meta.url);

/** The proto files whose messages we build or read. Their imports are loaded transitively. */
export const ENVOY_PROTO_FILES = [
  'envoy/service/discovery/v3/ads.proto',
  'envoy/service/discovery/v3/discovery.proto',
  'envoy/service/accesslog/v3/als.proto',
  'envoy/service/auth/v3/external_auth.proto',
  'envoy/service/secret/v3/sds.proto',
  'envoy/config/listener/v3/listener.proto',
  'envoy/config/cluster/v3/cluster.proto',
  'envoy/config/route/v3/route.proto',
  'envoy/config/endpoint/v3/endpoint.proto',
  'envoy/config/bootstrap/v3/bootstrap.proto',
  'envoy/extensions/transport_sockets/tls/v3/tls.proto',
  'envoy/extensions/transport_sockets/tls/v3/secret.proto',
  'envoy/extensions/transport_sockets/internal_upstream/v3/internal_upstream.proto',
  'envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto',
  'envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto',
  'envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto',
  'envoy/extensions/filters/network/sni_dynamic_forward_proxy/v3/sni_dynamic_forward_proxy.proto',
  'envoy/extensions/filters/network/connection_limit/v3/connection_limit.proto',
  'envoy/extensions/filters/network/rbac/v3/rbac.proto',
  'envoy/extensions/filters/network/set_filter_state/v3/set_filter_state.proto',
  'envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto',
  'envoy/extensions/filters/http/router/v3/router.proto',
  'envoy/extensions/filters/http/dynamic_forward_proxy/v3/dynamic_forward_proxy.proto',
  'envoy/extensions/filters/http/credential_injector/v3/credential_injector.proto',
  'envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto',
  'envoy/extensions/filters/http/jwt_authn/v3/config.proto',
  'envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto',
  'envoy/extensions/filters/http/buffer/v3/buffer.proto',
  'envoy/extensions/filters/http/rbac/v3/rbac.proto',
  'envoy/extensions/filters/http/set_filter_state/v3/set_filter_state.proto',
  'envoy/extensions/filters/http/upstream_codec/v3/upstream_codec.proto',
  'envoy/extensions/filters/http/header_mutation/v3/header_mutation.proto',
  'envoy/extensions/filters/http/lua/v3/lua.proto',
  'envoy/extensions/clusters/dynamic_forward_proxy/v3/cluster.proto',
  'envoy/extensions/common/dynamic_forward_proxy/v3/dns_cache.proto',
  'envoy/extensions/http/injected_credentials/generic/v3/generic.proto',
  'envoy/extensions/upstreams/http/v3/http_protocol_options.proto',
  'envoy/extensions/access_loggers/grpc/v3/als.proto',
  'envoy/extensions/access_loggers/file/v3/file.proto',
  'envoy/extensions/access_loggers/stream/v3/stream.proto',
  'envoy/extensions/access_loggers/filters/cel/v3/cel.proto',
  'envoy/extensions/bootstrap/internal_listener/v3/internal_listener.proto',
  'envoy/extensions/network/dns_resolver/cares/v3/cares_dns_resolver.proto',
  'envoy/extensions/filters/common/set_filter_state/v3/value.proto',
  'envoy/extensions/formatter/cel/v3/cel.proto',
  'xds/type/v3/typed_struct.proto',
  'xds/core/v3/cidr.proto',
  'google/protobuf/any.proto',
  'google/protobuf/duration.proto',
  'google/protobuf/struct.proto',
  'google/protobuf/wrappers.proto',
  'google/protobuf/empty.proto',
  'google/protobuf/timestamp.proto',
] as const;

/** Directories searched for imports, in order. */
export function protoIncludeDirs(): string[] {
  const xdsPkg = path.dirname(require.resolve('@grpc/grpc-js-xds/package.json'));
  const pbjs = path.dirname(require.resolve('protobufjs/package.json'));
  return [
    path.join(xdsPkg, 'deps', 'envoy-api'),
    path.join(xdsPkg, 'deps', 'xds'),
    path.join(xdsPkg, 'deps', 'googleapis'),
    path.join(xdsPkg, 'deps', 'protoc-gen-validate'),
    pbjs, // google/protobuf/descriptor.proto and friends
  ];
}

let cached: protobuf.Root | undefined;

/** The one protobufjs Root with every Envoy message we use, field names kept in snake_case. */
export function envoyRoot(): protobuf.Root {
  if (cached) return cached;
  const dirs = protoIncludeDirs();
  const root = new protobuf.Root();
  root.resolvePath = (_origin: string, target: string): string | null => {
    // protobufjs bundles the well-known types; let it use its own copies (except descriptor.proto,
    // which it does not bundle).
    if (target in protobuf.common && !target.endsWith('descriptor.proto')) return target;
    for (const d of dirs) {
      const p = path.join(d, target);
      if (fs.existsSync(p)) return p;
    }
    return target;
  };
  root.loadSync([...ENVOY_PROTO_FILES], { keepCase: true });
  applyOverlay(root);
  root.resolveAll();
  cached = root;
  return root;
}

export function lookupType(fullName: string): protobuf.Type {
  return envoyRoot().lookupType(fullName.replace(/^type\.googleapis\.com\//, ''));
}
