import { describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { bridgeName, Firewall, parseTaggedRules, renderSandboxRules, type CommandRunner } from './network.js';

describe('per-sandbox rules', () => {
  const rules = renderSandboxRules('inst', { sandboxId: 'abcdef012345', bridge: 'pcxabcdef012345', gateway: '198.18.4.1' }, 15001, 7070);

  it('accept only TCP to the gateway egress port and the agent channel replies, from that bridge', () => {
    expect(rules).toHaveLength(2);
    expect(rules[0]).toMatch(/-i pcxabcdef012345 -d 198\.18\.4\.1\/32 -p tcp -m tcp --dport 15001 .* -j ACCEPT$/);
    expect(rules[1]).toMatch(/-i pcxabcdef012345 -d 198\.18\.4\.1\/32 -p tcp -m tcp --sport 7070 -m conntrack --ctstate ESTABLISHED .* -j ACCEPT$/);
    for (const r of rules) expect(r).toMatch(/--comment portcullis:inst:abcdef012345:(egress|agent) /);
    expect(rules.join('\n')).not.toMatch(/NEW|RELATED/);
  });

  it('bridge names fit IFNAMSIZ', () => {
    expect(bridgeName('abcdef012345')).toBe('pcxabcdef012345');
    expect(() => bridgeName('abcdef0123456')).toThrow();
  });

  it('parses tagged rules from iptables -S output (quoted or not)', () => {
    const listing = [
      '-N PORTCULLIS-IN',
      '-A PORTCULLIS-IN -d 198.18.4.1/32 -i pcxabcdef012345 -p tcp -m tcp --sport 7070 -m conntrack --ctstate ESTABLISHED -m comment --comment "portcullis:inst:abcdef012345:agent" -j ACCEPT',
      '-A PORTCULLIS-IN -d 198.18.4.1/32 -i pcxabcdef012345 -p tcp -m tcp --dport 15001 -m comment --comment portcullis:other:0123456789ab:egress -j ACCEPT',
      '-A PORTCULLIS-IN -i pcx+ -m comment --comment "portcullis:base" -j DROP',
    ].join('\n');
    const r = parseTaggedRules(4, listing);
    expect(r.map((x) => [x.instanceId, x.sandboxId, x.role])).toEqual([
      ['inst', 'abcdef012345', 'agent'],
      ['other', '0123456789ab', 'egress'],
    ]);
  });
});

/** An in-memory iptables: enough to check which rules the Firewall adds and removes. */
function fakeIptables(): { run: CommandRunner; rules: Map<string, string[]>; calls: string[]; links: string[] } {
  const tables = new Map<string, string[]>();
  const links = ['lo', 'eth0'];
  const calls: string[] = [];
  const key = (family: string, chain: string) => `${family}:${chain}`;
  for (const f of ['4', '6']) for (const c of ['INPUT', 'FORWARD']) tables.set(key(f, c), []);
  const norm = (args: string[]) => args.join(' ').replace(/ -m tcp/g, '');
  const run: CommandRunner = async (cmd, argsIn, input) => {
    calls.push(`${cmd} ${argsIn.join(' ')}`);
    if (cmd === 'ip') return { code: 0, stdout: links.map((l, i) => `${i + 1}: ${l}: <UP> mtu 1500`).join('\n'), stderr: '' };
    const family = cmd.startsWith('ip6') ? '6' : '4';
    const args = argsIn.filter((a, i) => !(a === '-w' || argsIn[i - 1] === '-w') && a !== '--noflush');
    const apply = (line: string[]): number => {
      const [op, chain, ...rest] = line;
      const t = tables.get(key(family, chain!));
      if (op === '-N') {
        if (t) return 1;
        tables.set(key(family, chain!), []);
        return 0;
      }
      if (!t) return 1;
      if (op === '-S') return 0;
      if (op === '-F') {
        t.length = 0;
        return 0;
      }
      if (op === '-X') {
        tables.delete(key(family, chain!));
        return 0;
      }
      if (op === '-C') return t.includes(norm(rest)) ? 0 : 1;
      if (op === '-A') t.push(norm(rest));
      else if (op === '-I') {
        const pos = /^\d+$/.test(rest[0]!) ? Number(rest.shift()) : 1;
        t.splice(pos - 1, 0, norm(rest));
      } else if (op === '-D') {
        const i = t.indexOf(norm(rest));
        if (i < 0) return 1;
        t.splice(i, 1);
      }
      return 0;
    };
    if (cmd.endsWith('-restore')) {
      const lines = (input ?? '').split('\n').filter((l) => l.startsWith('-'));
      for (const l of lines) if (apply(l.split(' ')) !== 0) return { code: 1, stdout: '', stderr: `bad rule ${l}` };
      return { code: 0, stdout: '', stderr: '' };
    }
    if (args[0] === '-S') {
      const t = tables.get(key(family, args[1]!));
      if (!t) return { code: 1, stdout: '', stderr: 'no chain' };
      return { code: 0, stdout: t.map((r) => `-A ${args[1]} ${r}`).join('\n'), stderr: '' };
    }
    return { code: apply(args), stdout: '', stderr: '' };
  };
  return { run, rules: tables, calls, links };
}

describe('Firewall', () => {
  it('installs chains, jumps and the fail-closed catch-all once', async () => {
    const ipt = fakeIptables();
    const fw = new Firewall({ instanceId: 'a', egressPort: 15001, agentPort: 7070, logger: silentLogger(), run: ipt.run });
    await fw.ensureBase();
    await fw.ensureBase();
    for (const f of ['4', '6']) {
      expect(ipt.rules.get(`${f}:INPUT`)).toEqual(['-j PORTCULLIS-IN']);
      expect(ipt.rules.get(`${f}:FORWARD`)).toEqual(['-j PORTCULLIS-FWD']);
      expect(ipt.rules.get(`${f}:PORTCULLIS-IN`)).toEqual(['-i pcx+ -m comment --comment portcullis:base -j DROP']);
      expect(ipt.rules.get(`${f}:PORTCULLIS-FWD`)).toHaveLength(2);
    }
  });

  it('puts sandbox ACCEPTs before the catch-all, removes only its own instance and sandbox', async () => {
    const ipt = fakeIptables();
    const a = new Firewall({ instanceId: 'a', egressPort: 15001, agentPort: 7070, logger: silentLogger(), run: ipt.run });
    const b = new Firewall({ instanceId: 'b', egressPort: 15001, agentPort: 7070, logger: silentLogger(), run: ipt.run });
    await a.ensureBase();
    await a.allowSandbox({ sandboxId: '111111111111', bridge: 'pcx111111111111', gateway: '198.18.1.1' });
    await a.allowSandbox({ sandboxId: '222222222222', bridge: 'pcx222222222222', gateway: '198.18.2.1' });
    await b.allowSandbox({ sandboxId: '333333333333', bridge: 'pcx333333333333', gateway: '198.18.3.1' });
    const chain = () => ipt.rules.get('4:PORTCULLIS-IN')!;
    expect(chain()).toHaveLength(7);
    expect(chain().at(-1)).toMatch(/pcx\+ .* -j DROP/);

    expect(await a.dropEgress('111111111111')).toBe(1);
    expect(chain().filter((r) => r.includes('111111111111'))).toEqual([expect.stringMatching(/--sport 7070/)]);

    expect(await a.removeOrphans(new Set(['222222222222']))).toBe(1);
    expect(chain().some((r) => r.includes('111111111111'))).toBe(false);
    expect(chain().filter((r) => r.includes('222222222222'))).toHaveLength(2);
    expect(chain().filter((r) => r.includes('333333333333'))).toHaveLength(2);

    expect(await a.removeSandbox('222222222222')).toBe(2);
    expect(chain()).toHaveLength(3);
    expect(chain().at(-1)).toMatch(/pcx\+ .* -j DROP/);
  });

  it('releases the shared base only when no instance has a rule and no sandbox bridge exists', async () => {
    const ipt = fakeIptables();
    const a = new Firewall({ instanceId: 'a', egressPort: 15001, agentPort: 7070, logger: silentLogger(), run: ipt.run });
    const b = new Firewall({ instanceId: 'b', egressPort: 15001, agentPort: 7070, logger: silentLogger(), run: ipt.run });
    await a.ensureBase();
    await b.allowSandbox({ sandboxId: '333333333333', bridge: 'pcx333333333333', gateway: '198.18.3.1' });
    ipt.links.push('pcx333333333333');
    // another instance still has a sandbox: the DROPs stay
    expect(await a.releaseBaseIfUnused()).toBe(false);
    expect(ipt.rules.get('4:PORTCULLIS-IN')).toHaveLength(3);
    await b.removeSandbox('333333333333');
    // its bridge still exists (teardown not finished): the DROPs still stay
    expect(await a.releaseBaseIfUnused()).toBe(false);
    expect(ipt.rules.get('4:PORTCULLIS-IN')).toEqual(['-i pcx+ -m comment --comment portcullis:base -j DROP']);
    ipt.links.pop();
    expect(await a.releaseBaseIfUnused()).toBe(true);
    for (const f of ['4', '6']) {
      expect(ipt.rules.get(`${f}:INPUT`)).toEqual([]);
      expect(ipt.rules.get(`${f}:FORWARD`)).toEqual([]);
      expect(ipt.rules.has(`${f}:PORTCULLIS-IN`)).toBe(false);
      expect(ipt.rules.has(`${f}:PORTCULLIS-FWD`)).toBe(false);
    }
    // and a later start puts it back
    await a.ensureBase();
    expect(ipt.rules.get('4:INPUT')).toEqual(['-j PORTCULLIS-IN']);
  });
});
