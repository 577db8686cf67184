import YAML from 'yaml';
import { registerPolicySubcommand, UsageError, type PolicyCliContext } from '../policy/cli.js';
import { renderIr } from '../xds-server/render.js';

/** `portcullis policy render FILE [--json]`: YAML by default (sorted keys), JSON on request. */
export async function renderCommand(args: string[], ctx: PolicyCliContext): Promise<number> {
  const json = args.includes('--json');
  const files = args.filter((a) => a !== '--json');
  if (files.length !== 1 || files[0]!.startsWith('-')) throw new UsageError('expects exactly one FILE');
  const ir = await ctx.compileFile(files[0]!);
  const out = renderIr(ir);
  ctx.io.stdout.write(json ? `${JSON.stringify(out, null, 2)}\n` : YAML.stringify(out, { lineWidth: 0, aliasDuplicateObjects: false }));
  return 0;
}

export function registerRender(): void {
  registerPolicySubcommand('render', renderCommand, 'portcullis policy render FILE [--json]');
}
