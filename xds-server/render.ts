import type { Ir } from '../policy/ir.js';
import { SHORT_NAME, XDS, XDS_TYPE_URLS } from '../envoy/api/type-urls.js';
import { buildSnapshot } from './snapshot.js';
import { translate, type TranslateOptions } from './translate/index.js';
import { bumpSecretNames, leafSecretName } from './translate/bump.js';
import { XDS_CLUSTER_NAME } from '../envoy/bootstrap.js';
import { SESSION_AUDIENCE } from './sessions.js';

/**
 * `portcullis policy render`: the Envoy resources a policy compiles to, exactly as they would be
 * pushed (translated and pre-push validated), with every secret value redacted.
 */

export const DEFAULT_RENDER_OPTIONS: TranslateOptions = {
  egress: {
    listen: { address: '0.0.0.0', port: 15001 },
    accessLogCluster: XDS_CLUSTER_NAME,
    bump: { controlPlaneCluster: XDS_CLUSTER_NAME },
  },
  // the session signer's public keys exist only at run time (the supervisor makes them): rendered empty
  sessionVerifier: { jwks: { keys: [] }, audience: SESSION_AUDIENCE },
};

export const REDACTED = '[redacted]';

/** Fields whose values are secret material wherever they appear in a Secret resource. */
const SECRET_FIELDS = new Set(['inline_string', 'inline_bytes', 'environment_variable']);

export function redactSecrets(v: unknown, insideSecret = false): unknown {
  if (Array.isArray(v)) return v.map((x) => redactSecrets(x, insideSecret));
  if (!v || typeof v !== 'object') return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    if (insideSecret && SECRET_FIELDS.has(k)) out[k] = REDACTED;
    else out[k] = redactSecrets(x, insideSecret || k === 'private_key' || k === 'generic_secret' || k === 'tls_certificate' || k === 'secret');
  }
  return out;
}

export interface Rendered {
  version: string;
  resources: Record<string, unknown[]>;
}

export function renderIr(ir: Ir, opts: TranslateOptions = DEFAULT_RENDER_OPTIONS): Rendered {
  const t = translate(ir, opts);
  // Leaves and file credentials are made at run time (sds-minter, credential files): their names are
  // referenced here, their values never rendered.
  const names = bumpSecretNames(ir);
  const snap = buildSnapshot(t.input, {
    staticClusters: t.staticClusters,
    externalSecrets: [...names.leaves.map(leafSecretName), ...names.credentials.filter((c) => c.kind === 'file').map((c) => c.secret)],
  });
  const resources: Record<string, unknown[]> = {};
  for (const typeUrl of XDS_TYPE_URLS) {
    const list = [...snap.resources.get(typeUrl)!.values()].map((r) => (typeUrl === XDS.secret ? redactSecrets(r.body, true) : redactSecrets(r.body)));
    if (list.length) resources[SHORT_NAME[typeUrl]] = list;
  }
  return { version: snap.version, resources };
}
