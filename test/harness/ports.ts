import net from 'node:net';

/**
 * Ports the tests hand to listeners (Envoy's, the control plane's, test servers') come from below the
 * kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768–60999 by default). A port the kernel
 * picked for `listen(0)` is an ephemeral one: between the check and the real bind, the same port can be
 * taken as the source port of an outgoing connection (a test flooding CONNECTs makes thousands), and
 * Envoy then fails to bind its listener. Below the range, only another listener can take it.
 */
const LISTEN_PORT_RANGE = { from: 20_000, to: 32_000 } as const;
const handedOut = new Set<number>();

function canListen(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, host, () => s.close(() => resolve(true)));
  });
}

/** A TCP port free on `host` right now, below the ephemeral range, never handed out twice by this process. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const span = LISTEN_PORT_RANGE.to - LISTEN_PORT_RANGE.from;
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = LISTEN_PORT_RANGE.from + Math.floor(Math.random() * span);
    if (handedOut.has(port)) continue;
    if (await canListen(port, host)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`no free port in ${LISTEN_PORT_RANGE.from}–${LISTEN_PORT_RANGE.to} on ${host}`);
}

export async function freePorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  const out = new Set<number>();
  while (out.size < n) out.add(await freePort(host));
  return [...out];
}

/** Poll `fn` until it returns a truthy value or `timeoutMs` passes. */
export async function eventually<T>(fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Whether a process with this pid exists. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
