import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ControlPlane } from './control-plane.js';
import { compileFile } from '../policy/compile.js';
import { silentLogger } from '../common/logger.js';

const EXAMPLES = path.join(import.meta.dirname, '..', 'policy', 'examples');

describe('ControlPlane.apply', () => {
  it('publishes a good policy and refuses a bad translation, keeping the last good snapshot live', async () => {
    const { ir } = await compileFile(path.join(EXAMPLES, 'solo-default.yaml'));
    const listen = { address: '127.0.0.1', port: 15001 };
    const cp = new ControlPlane({ logger: silentLogger(), nodeKey: 'n1', translate: { egress: { listen } } });
    const snap = cp.apply(ir, { immediate: true });
    expect(cp.server.cache.get('n1')?.version).toBe(snap.version);
    expect(cp.status()).toMatchObject({ liveVersion: snap.version, lastRefused: null });

    const refused: Array<Record<string, unknown>> = [];
    cp.events.on((e) => e.type === 'config.reload_refused' && refused.push(e.data));
    listen.address = ''; // the listener now fails pre-push validation
    expect(() => cp.apply(ir, { immediate: true })).toThrow(/socket_address\.address/);
    expect(refused).toHaveLength(1);
    expect(refused[0]).toMatchObject({ code: 'resource_invalid' });
    expect(cp.status().lastRefused?.code).toBe('resource_invalid');
    // nothing was published: the last good snapshot is still what Envoy gets
    expect(cp.server.cache.get('n1')?.version).toBe(snap.version);
    expect(cp.status().liveVersion).toBe(snap.version);
    await cp.close();
  });
});
