import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The agent is Python 3 (the image already has it) delivered at start through the container's stdin:
 * argv holds only a fixed bootstrap that reads a length-prefixed source and runs it, then the agent
 * reads one JSON line of parameters (the channel key among them). Nothing secret reaches argv, the
 * environment or a file, and the agent's code is not on the sandbox's disk.
 */

export const AGENT_BOOTSTRAP = "import sys;b=sys.stdin.buffer;n=int(b.readline());exec(compile(b.read(n),'portcullis-agent','exec'))";

/** The container command: isolated mode (no PYTHON* env, no user site), no site import, no .pyc. */
export const AGENT_COMMAND: readonly string[] = ['/usr/bin/python3', '-I', '-S', '-B', '-c', AGENT_BOOTSTRAP];

let cached: Buffer | undefined;

/** guest.py, found beside this module (sources) or in the source tree next to the build output. */
export function agentSource(): Buffer {
  if (cached) return cached;
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.join(here, 'guest.py'), path.resolve(here, '..', '..', '..', 'sandbox', 'agent', 'guest.py')];
  for (const c of candidates) {
    if (fs.existsSync(c)) {
      cached = fs.readFileSync(c);
      return cached;
    }
  }
  throw new Error(`sandbox agent source not found (looked in ${candidates.join(', ')})`);
}

export interface AgentInit {
  key: string;
  port: number;
  hostAddr: string;
  baseEnv: Record<string, string>;
  denyPatterns: string[];
  reserved: string[];
  memSoftLimit: number;
}

/** What is written to the container's stdin: `<length>\n<source><init JSON>\n`. */
export function agentStdinPayload(init: AgentInit): Buffer {
  const src = agentSource();
  return Buffer.concat([Buffer.from(`${src.length}\n`), src, Buffer.from(`${JSON.stringify(init)}\n`)]);
}
