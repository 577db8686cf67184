import { PortcullisError } from '../common/errors.js';
import { ADMISSION_MATRIX, type AdmissionVerdict, type Runtime, type TrustProfile } from '../policy/schema.js';

/** Docker runtime per tier. The microVM tier has no Docker runtime here (it has not shipped). */
export type DockerRuntimeKind = 'runsc' | 'runc';

export interface AdmissionDecision {
  verdict: AdmissionVerdict;
  /** Set when admitted. */
  kind?: DockerRuntimeKind;
}

/**
 * NFR-SEC-38: the workload trust profile × runtime tier matrix (owned by policy/schema.ts). Admitted
 * cells map to a Docker runtime: gvisor → runsc, runc → runc. Everything else is refused.
 */
export function decideAdmission(profile: TrustProfile, runtime: Runtime): AdmissionDecision {
  const row = ADMISSION_MATRIX[profile];
  const verdict = row?.[runtime];
  if (verdict === undefined) return { verdict: 'pairing_rejected' };
  if (verdict !== 'admitted') return { verdict };
  if (runtime === 'gvisor') return { verdict, kind: 'runsc' };
  if (runtime === 'runc') return { verdict, kind: 'runc' };
  // An admitted cell without a Docker runtime behind it is refused rather than guessed.
  return { verdict: 'tier_unavailable' };
}

/** Throws `admission_refused` unless the pairing is admitted; returns the Docker runtime kind. */
export function requireAdmission(profile: TrustProfile, runtime: Runtime): DockerRuntimeKind {
  const d = decideAdmission(profile, runtime);
  if (d.verdict !== 'admitted' || d.kind === undefined) {
    throw new PortcullisError('admission_refused', `workload trust profile '${profile}' × runtime '${runtime}' is not admitted (${d.verdict}; NFR-SEC-38)`, {
      publicMessage: 'sandbox runtime not admitted for this deployment',
      details: { profile, runtime, verdict: d.verdict },
    });
  }
  return d.kind;
}
