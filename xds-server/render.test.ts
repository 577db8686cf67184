import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { compileFile } from '../policy/compile.js';
import { renderIr, redactSecrets, REDACTED } from './render.js';
import { expectGolden, assertNoSecrets } from '../test/harness/golden.js';

const EXAMPLES = path.join(import.meta.dirname, '..', 'policy', 'examples');
const GOLDEN = path.join(import.meta.dirname, 'testdata', 'render');

describe('render (policy → Envoy resources, validated, secrets redacted)', () => {
  const examples = fs.readdirSync(EXAMPLES).filter((f) => f.endsWith('.yaml')).sort();
  fs.mkdirSync(GOLDEN, { recursive: true });

  it.each(examples)('%s renders to its golden resources', async (file) => {
    const { ir } = await compileFile(path.join(EXAMPLES, file));
    const out = renderIr(ir);
    // golden files must not depend on where the checkout lives
    const text = JSON.parse(JSON.stringify(out).split(path.resolve(EXAMPLES, '..', '..')).join('<root>'));
    expectGolden(GOLDEN, file.replace(/\.yaml$/, ''), text);
  });

  it('has no stale golden outputs', () => {
    const inputs = new Set(examples.map((f) => f.replace(/\.yaml$/, '')));
    const stale = fs.readdirSync(GOLDEN).filter((f) => f.endsWith('.out.yaml') && !inputs.has(f.slice(0, -'.out.yaml'.length)));
    if (process.env.UPDATE_GOLDEN === '1') for (const f of stale) fs.rmSync(path.join(GOLDEN, f));
    else expect(stale).toEqual([]);
  });

  it('redacts every secret value in Secret resources', () => {
    const key = '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----';
    const r = redactSecrets(
      { name: 'leaf:x', tls_certificate: { certificate_chain: { inline_string: 'CERT' }, private_key: { inline_string: key } }, generic_secret: { secret: { inline_string: 'api-key-123456' } } },
      true,
    ) as Record<string, any>;
    expect(r.tls_certificate.private_key.inline_string).toBe(REDACTED);
    expect(r.generic_secret.secret.inline_string).toBe(REDACTED);
    assertNoSecrets(r, [key, 'api-key-123456']);
  });
});
