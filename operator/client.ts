import http from 'node:http';
import path from 'node:path';

/** Client of the operator API (the CLI, tests, benchmarks). */

export const OPERATOR_SOCKET_FILE = 'operator.sock';

export interface OperatorClientOptions {
  /** unix socket (default) */
  socketPath?: string;
  /** or `http://127.0.0.1:PORT` with a bearer token */
  url?: string;
  token?: string;
  /** a label recorded with actions (`x-portcullis-operator`) */
  operator?: string;
  timeoutMs?: number;
}

export interface OperatorResponse<T = unknown> {
  status: number;
  body: T;
  text: string;
}

export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.PORTCULLIS_OPERATOR_SOCKET) return path.resolve(env.PORTCULLIS_OPERATOR_SOCKET);
  return path.resolve(env.PORTCULLIS_DATA_DIR ?? 'data', OPERATOR_SOCKET_FILE);
}

export class OperatorClient {
  private readonly agent: http.Agent;
  constructor(private readonly o: OperatorClientOptions) {
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  }

  request<T = unknown>(method: string, p: string, body?: unknown, headers: Record<string, string> = {}): Promise<OperatorResponse<T>> {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const h: Record<string, string> = { accept: 'application/json', ...headers };
    if (payload !== undefined) {
      h['content-type'] ??= 'application/json';
      h['content-length'] = String(Buffer.byteLength(payload));
    }
    if (this.o.operator) h['x-portcullis-operator'] = this.o.operator;
    if (this.o.token && !h.authorization) h.authorization = `Bearer ${this.o.token}`;
    const target: http.RequestOptions = this.o.url
      ? (() => {
          const u = new URL(this.o.url!);
          return { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 80) };
        })()
      : { socketPath: this.o.socketPath ?? defaultSocketPath() };
    return new Promise((resolve, reject) => {
      const req = http.request({ ...target, agent: this.agent, method, path: p, headers: h, timeout: this.o.timeoutMs ?? 30_000 }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = text;
          if ((res.headers['content-type'] ?? '').includes('json')) {
            try {
              parsed = JSON.parse(text);
            } catch {
              parsed = text;
            }
          }
          resolve({ status: res.statusCode ?? 0, body: parsed as T, text });
        });
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error('operator API request timed out')));
      req.on('error', reject);
      req.end(payload);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}
