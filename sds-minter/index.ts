export { Minter, DEFAULT_CA_RENEW_BEFORE_MS, DEFAULT_ROTATION_OVERLAP_MS, DEFAULT_TICK_INTERVAL_MS } from './minter.js';
export type { MinterOptions, MinterEvents, MinterStatus } from './minter.js';
export { CaStore, CaGeneration, constraintsForHosts, DEFAULT_CA_VALIDITY_MS, RSA_MODULUS_BITS } from './ca.js';
export type { CaInfo, CaStoreOptions, Clock, NameConstraintSet, RetiringCa } from './ca.js';
export { Leaf, DEFAULT_LEAF_TTL_MS } from './leaf.js';
export type { LeafInfo } from './leaf.js';
export { LeafCache, DEFAULT_REFRESH_FRACTION } from './cache.js';
export type { LeafCacheOptions, LeafCacheEvents } from './cache.js';
export {
  SECRET_TYPE_URL,
  LEAF_SECRET_PREFIX,
  CA_BUNDLE_SECRET_NAME,
  leafSecret,
  leafSecretName,
  leafNameFromSecret,
  caBundleSecret,
} from './secrets.js';
export type { SdsSecret, TlsCertificateSecret, ValidationContextSecret, InlineString } from './secrets.js';
export { allowListPolicy, parseName, sanCovers } from './names.js';
export type { MintPolicy, MintDecision, ParsedName, LeafNameKind } from './names.js';
export { CaUnavailableError, MintRefusedError } from './errors.js';
export type { MintRefusalReason } from './errors.js';
