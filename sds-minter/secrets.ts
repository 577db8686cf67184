import { inspect } from 'node:util';
import type { Leaf } from './leaf.js';

/**
 * SDS `Secret` resources (envoy.extensions.transport_sockets.tls.v3.Secret) in proto3 JSON form
 * with the proto field names (snake_case), ready for the xDS server to pack into an `Any`.
 */
export const SECRET_TYPE_URL = 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret';

/** Prefix of leaf secret names: `leaf:api.example.com`, `leaf:*.example.com`, `leaf:198.51.100.7`. */
export const LEAF_SECRET_PREFIX = 'leaf:';

/** Name of the validation-context secret carrying the deployment CA trust bundle. */
export const CA_BUNDLE_SECRET_NAME = 'portcullis-ca-bundle';

export interface InlineString {
  inline_string: string;
}

export interface TlsCertificateSecret {
  name: string;
  tls_certificate: {
    certificate_chain: InlineString;
    private_key: InlineString;
  };
}

export interface ValidationContextSecret {
  name: string;
  validation_context: {
    trusted_ca: InlineString;
  };
}

export type SdsSecret = TlsCertificateSecret | ValidationContextSecret;

export function leafSecretName(leafName: string): string {
  return `${LEAF_SECRET_PREFIX}${leafName}`;
}

/** The leaf name in a `leaf:<name>` secret name, or null for any other secret name. */
export function leafNameFromSecret(secretName: string): string | null {
  return secretName.startsWith(LEAF_SECRET_PREFIX) && secretName.length > LEAF_SECRET_PREFIX.length
    ? secretName.slice(LEAF_SECRET_PREFIX.length)
    : null;
}

/**
 * The `tls_certificate` secret for a leaf: chain = leaf + issuing CA, key = the leaf key.
 * The key's DataSource redacts itself under `util.inspect` (a non-enumerable hook, invisible to
 * JSON and protobuf conversion, which must see the key); never log the returned object.
 */
export function leafSecret(leaf: Leaf): TlsCertificateSecret {
  const privateKey: InlineString = { inline_string: leaf.privateKeyPem() };
  Object.defineProperty(privateKey, inspect.custom, {
    value: () => ({ inline_string: '[redacted]' }),
    enumerable: false,
  });
  return {
    name: leafSecretName(leaf.name),
    tls_certificate: {
      certificate_chain: { inline_string: leaf.chainPem },
      private_key: privateKey,
    },
  };
}

/** The `validation_context` secret with the trust bundle (every active CA generation). */
export function caBundleSecret(bundlePem: string, name = CA_BUNDLE_SECRET_NAME): ValidationContextSecret {
  return { name, validation_context: { trusted_ca: { inline_string: bundlePem } } };
}
