import { describe, expect, it } from 'vitest';
import { PortcullisError } from '../common/errors.js';
import { RUNTIMES, TRUST_PROFILES } from '../policy/schema.js';
import { decideAdmission, requireAdmission } from './admission.js';

describe('admission matrix (NFR-SEC-38)', () => {
  const expected: Record<string, string | null> = {
    'trusted_operator×runc': 'runc',
    'trusted_operator×gvisor': 'runsc',
    'trusted_operator×microvm': null,
    'internal_workforce×runc': null,
    'internal_workforce×gvisor': 'runsc',
    'internal_workforce×microvm': null,
    'untrusted×runc': null,
    'untrusted×gvisor': null,
    'untrusted×microvm': null,
  };

  it('has 9 cells: 3 admitted, 6 refused', () => {
    let admitted = 0;
    for (const p of TRUST_PROFILES) for (const r of RUNTIMES) if (decideAdmission(p, r).verdict === 'admitted') admitted++;
    expect(TRUST_PROFILES.length * RUNTIMES.length).toBe(9);
    expect(admitted).toBe(3);
  });

  for (const p of TRUST_PROFILES) {
    for (const r of RUNTIMES) {
      const want = expected[`${p}×${r}`];
      it(`${p} × ${r} → ${want ?? 'refused'}`, () => {
        if (want === null) {
          expect(() => requireAdmission(p, r)).toThrow(PortcullisError);
          try {
            requireAdmission(p, r);
          } catch (e) {
            expect((e as PortcullisError).code).toBe('admission_refused');
          }
        } else {
          expect(requireAdmission(p, r)).toBe(want);
        }
      });
    }
  }

  it('runc is never chosen for anything but trusted_operator', () => {
    for (const p of TRUST_PROFILES) {
      if (p === 'trusted_operator') continue;
      for (const r of RUNTIMES) expect(decideAdmission(p, r).kind).not.toBe('runc');
    }
  });
});
