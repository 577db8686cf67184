#!/usr/bin/env node
// Generates TypeScript types for the Envoy gRPC services we implement (ADS, SDS, ALS, ext_authz)
// with @grpc/proto-loader's generator, from the protos shipped in @grpc/grpc-js-xds.
// Output: envoy/generated/ (git-ignored, regenerated on every build; never edit by hand).
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const xds = path.dirname(require.resolve('@grpc/grpc-js-xds/package.json'));
const pbjs = path.dirname(require.resolve('protobufjs/package.json'));
const out = path.join(root, 'envoy', 'generated');
const files = [
  'envoy/service/discovery/v3/ads.proto',
  'envoy/service/secret/v3/sds.proto',
  'envoy/service/accesslog/v3/als.proto',
  'envoy/service/auth/v3/external_auth.proto',
];
const includes = ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => path.join(xds, 'deps', d));
includes.push(pbjs);
fs.rmSync(out, { recursive: true, force: true });
const bin = path.join(path.dirname(require.resolve('@grpc/proto-loader/package.json')), 'build', 'bin', 'proto-loader-gen-types.js');
execFileSync(
  process.execPath,
  [bin, '--keepCase', '--longs=String', '--enums=String', '--defaults', '--oneofs', '--grpcLib=@grpc/grpc-js',
    '--outDir', out, ...includes.map((i) => `--includeDirs=${i}`), '--importFileExtension=.js', ...files],
  { stdio: ['ignore', 'ignore', 'inherit'] },
);
const count = fs.readdirSync(out, { recursive: true }).filter((f) => String(f).endsWith('.ts')).length;
console.log(`generated ${count} type files in envoy/generated`);
