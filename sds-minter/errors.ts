import { PortcullisError, type ErrorDetails } from '../common/errors.js';

/**
 * The deployment CA cannot be created, loaded or used (bad file modes, inconsistent state, expired
 * CA, I/O failure). Messages name files and generations, never key material.
 */
export class CaUnavailableError extends PortcullisError {
  constructor(message: string, opts: { details?: ErrorDetails; cause?: unknown } = {}) {
    super('ca_unavailable', message, opts);
  }
}

/** Why a mint was refused. Stable values: they appear in `mint.refused` audit events. */
export type MintRefusalReason =
  | 'invalid_name'
  | 'not_allowed'
  | 'san_mismatch'
  | 'outside_ca_name_constraints';

/** A leaf was requested for a name the policy does not allow at a bump rung (or that is malformed). */
export class MintRefusedError extends PortcullisError {
  constructor(
    readonly reason: MintRefusalReason,
    name: string,
  ) {
    super('mint_refused', `leaf certificate refused for "${name}": ${reason.replace(/_/g, ' ')}`, {
      details: { name, reason },
    });
  }
}
