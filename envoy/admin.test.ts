import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { EnvoyHarnessError } from '../common/errors.js';
import {
  describeVersions,
  EnvoyAdmin,
  escapeRegex,
  flattenStats,
  flattenTextReadouts,
  isVersionApplied,
  rejectedUpdates,
  statName,
  versionsOf,
  type ConfigDump,
} from './admin.js';
import { CONFIG_DUMP, XDS } from './api/type-urls.js';

/**
 * Fixtures recorded from Envoy 1.40.0 (xDS from files; resource bodies trimmed to their names):
 * CDS c1 → c2 adding a cluster whose EDS never arrives (`cold`, warming); EDS e1 for `up:stream`;
 * LDS l1 with two listeners, one waiting on an SDS secret that never arrives (`pending`), so Envoy's
 * initialization has not finished and both listeners still show as warming; RDS r1; SDS s1.
 */
const testdata = path.join(path.dirname(fileURLToPath(import.meta.url)), 'testdata');
const dump = JSON.parse(fs.readFileSync(path.join(testdata, 'admin-config-dump.json'), 'utf8')) as ConfigDump;
const statsJson = JSON.parse(fs.readFileSync(path.join(testdata, 'admin-stats.json'), 'utf8')) as unknown;
const readouts = flattenTextReadouts(statsJson);

describe('stats', () => {
  it('flattens counters and gauges, leaving out histograms and text readouts', () => {
    const stats = flattenStats(statsJson);
    expect(stats['control_plane.connected_state']).toBe(0);
    expect(stats['cluster_manager.cds.update_success']).toBe(2);
    expect(Object.keys(stats).some((k) => k.endsWith('.version_text'))).toBe(false);
    expect(Object.keys(stats).some((k) => k.includes('cookie_count'))).toBe(false); // a histogram
    expect(Object.values(stats).every((v) => typeof v === 'number')).toBe(true);
  });

  it('reads text readouts', () => {
    expect(readouts['cluster_manager.cds.version_text']).toBe('c2');
    expect(readouts['sds.leaf.version_text']).toBe('s1');
  });

  it('rejectedUpdates lists every *.update_rejected above 0, and nothing else', () => {
    const stats = flattenStats(statsJson);
    expect(rejectedUpdates(stats)).toEqual({});
    const bad = {
      ...stats,
      'listener_manager.lds.update_rejected': 1,
      'http.l.rds.rc.update_rejected': 2,
      'sds.leaf.update_rejected': 1,
      'cluster.up_stream.update_rejected': 3,
      'cluster_manager.cds.update_success': 9,
    };
    expect(rejectedUpdates(bad)).toEqual({
      'listener_manager.lds.update_rejected': 1,
      'http.l.rds.rc.update_rejected': 2,
      'sds.leaf.update_rejected': 1,
      'cluster.up_stream.update_rejected': 3,
    });
  });

  it('names stats the way Envoy does', () => {
    expect(statName('up:stream')).toBe('up_stream');
    expect(readouts[`cluster.${statName('up:stream')}.version_text`]).toBe('e1');
    expect(escapeRegex('listener.127.0.0.1_0.x')).toBe('listener\\.127\\.0\\.0\\.1_0\\.x');
  });
});

describe('versionsOf + isVersionApplied on a real config dump', () => {
  it('clusters: the type version counts, per-cluster versions do not; warming blocks unless allowed', () => {
    const tv = versionsOf(XDS.cluster, dump);
    expect(tv.typeVersion).toBe('c2');
    expect(tv.resources).toEqual([
      { name: 'up:stream', version: 'c1', state: 'active' },
      { name: 'cold', version: 'c2', state: 'warming' },
    ]);
    expect(isVersionApplied(tv, 'c2')).toBe(false);
    expect(isVersionApplied(tv, 'c2', { allowWarming: true })).toBe(true);
    expect(isVersionApplied(tv, 'c1', { allowWarming: true })).toBe(false);
    expect(isVersionApplied(tv, 'c2', { names: ['up:stream'] })).toBe(true);
    expect(isVersionApplied(tv, 'c2', { names: ['up:stream', 'cold'] })).toBe(false);
    expect(isVersionApplied(tv, 'c2', { names: ['absent'], allowWarming: true })).toBe(false);
  });

  it('listeners: warming listeners keep the version from counting', () => {
    const tv = versionsOf(XDS.listener, dump);
    expect(tv.typeVersion).toBe('l1');
    expect(tv.resources.map((r) => [r.name, r.state])).toEqual([
      ['l', 'warming'],
      ['w', 'warming'],
    ]);
    expect(isVersionApplied(tv, 'l1')).toBe(false);
    expect(isVersionApplied(tv, 'l1', { allowWarming: true })).toBe(true);
    expect(isVersionApplied(tv, 'l0', { allowWarming: true })).toBe(false);
  });

  it('routes: any route configuration at the version', () => {
    const tv = versionsOf(XDS.route, dump);
    expect(tv.resources).toEqual([{ name: 'rc', version: 'r1', state: 'active' }]);
    expect(isVersionApplied(tv, 'r1')).toBe(true);
    expect(isVersionApplied(tv, 'r1', { names: ['rc'] })).toBe(true);
    expect(isVersionApplied(tv, 'r2')).toBe(false);
  });

  it('secrets: a secret that never arrived is warming', () => {
    const tv = versionsOf(XDS.secret, dump);
    expect(tv.resources).toEqual([
      { name: 'leaf', version: 's1', state: 'active' },
      { name: 'pending', version: 'uninitialized', state: 'warming' },
    ]);
    expect(isVersionApplied(tv, 's1')).toBe(false);
    expect(isVersionApplied(tv, 's1', { names: ['leaf'] })).toBe(true);
    expect(isVersionApplied(tv, 's1', { names: ['leaf', 'pending'] })).toBe(false);
  });

  it('endpoints: versions come from the EDS text readouts, since the dump has none', () => {
    expect(versionsOf(XDS.endpoint, dump).resources).toEqual([{ name: 'up:stream', version: undefined, state: 'active' }]);
    const tv = versionsOf(XDS.endpoint, dump, readouts);
    expect(tv.resources).toEqual([{ name: 'up:stream', version: 'e1', state: 'active' }]);
    expect(isVersionApplied(tv, 'e1', { names: ['up:stream'] })).toBe(true);
    expect(isVersionApplied(tv, 'e2')).toBe(false);
  });

  it('collects per-resource error states for the timeout message', () => {
    const withError: ConfigDump = {
      configs: [
        {
          '@type': CONFIG_DUMP.listeners,
          version_info: 'l1',
          dynamic_listeners: [
            {
              name: 'x',
              active_state: { version_info: 'l1' },
              error_state: { details: 'no such field', version_info: 'l2' },
            },
          ],
        },
      ],
    };
    const tv = versionsOf(XDS.listener, withError);
    expect(tv.errors).toEqual([{ name: 'x', version: 'l2', details: 'no such field' }]);
    expect(describeVersions(tv)).toBe('type version "l1"; resources: x@l1; errors: x@l2: no such field');
  });

  it('refuses a type it does not serve', () => {
    expect(() => versionsOf(CONFIG_DUMP.bootstrap, dump)).toThrow(EnvoyHarnessError);
  });
});

describe('EnvoyAdmin', () => {
  it('talks to 127.0.0.1 only', () => {
    expect(new EnvoyAdmin('http://127.0.0.1:9901/').baseUrl).toBe('http://127.0.0.1:9901');
    for (const bad of ['http://0.0.0.0:9901/', 'http://localhost:9901/', 'http://10.0.0.1:9901/', 'https://127.0.0.1:9901/', 'http://127.0.0.1/']) {
      expect(() => new EnvoyAdmin(bad), bad).toThrow(EnvoyHarnessError);
    }
  });
});
