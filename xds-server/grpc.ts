import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoIncludeDirs } from '../envoy/api/protos.js';
import type { ProtoGrpcType as AdsProto } from '../envoy/generated/ads.js';
import type { ProtoGrpcType as SdsProto } from '../envoy/generated/sds.js';
import type { ProtoGrpcType as AlsProto } from '../envoy/generated/als.js';
import type { ProtoGrpcType as AuthzProto } from '../envoy/generated/external_auth.js';

/**
 * gRPC service definitions for the Envoy services we implement, loaded once with the same options
 * the generated types were made with (envoy/generated, via scripts/gen-proto-types.mjs).
 */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: protoIncludeDirs(),
};

let loaded: { ads: AdsProto; sds: SdsProto; als: AlsProto; authz: AuthzProto } | undefined;

export function envoyServices() {
  if (loaded) return loaded;
  const load = <T>(file: string) => grpc.loadPackageDefinition(protoLoader.loadSync(file, LOADER_OPTIONS)) as unknown as T;
  loaded = {
    ads: load<AdsProto>('envoy/service/discovery/v3/ads.proto'),
    sds: load<SdsProto>('envoy/service/secret/v3/sds.proto'),
    als: load<AlsProto>('envoy/service/accesslog/v3/als.proto'),
    authz: load<AuthzProto>('envoy/service/auth/v3/external_auth.proto'),
  };
  return loaded;
}
