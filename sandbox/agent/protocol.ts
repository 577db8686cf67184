import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Host ↔ agent wire format (the agent side is sandbox/agent/guest.py): frames of
 * `u32 big-endian payload length | u8 type | payload`, payload ≤ MAX_FRAME. A frame announcing more is
 * refused before any of it is buffered.
 *
 * Connection: agent → `hello {nonce}`; host → `auth {nonce, mac}`; agent → `ok {mac}`; host → one
 * request; frames of the operation; the agent closes. Both MACs are HMAC-SHA256 under the sandbox's
 * channel key over a role label and both nonces, so each side proves the key without revealing it.
 */

export const PROTOCOL_VERSION = 1;
export const MAX_FRAME = 1 << 20;
export const HEADER_BYTES = 5;

export const FrameType = {
  json: 1,
  stdout: 2,
  stderr: 3,
  stdin: 4,
  stdinEof: 5,
  data: 6,
  dataEnd: 7,
} as const;
export type FrameTypeValue = (typeof FrameType)[keyof typeof FrameType];

export interface Frame {
  type: number;
  payload: Buffer;
}

export function encodeFrame(type: number, payload: Buffer | string = Buffer.alloc(0)): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  if (body.length > MAX_FRAME) throw new RangeError(`frame payload of ${body.length} bytes exceeds ${MAX_FRAME}`);
  const head = Buffer.allocUnsafe(HEADER_BYTES);
  head.writeUInt32BE(body.length, 0);
  head.writeUInt8(type, 4);
  return Buffer.concat([head, body]);
}

export function encodeJson(obj: unknown): Buffer {
  return encodeFrame(FrameType.json, JSON.stringify(obj));
}

export class FrameTooLargeError extends Error {
  constructor(readonly announced: number) {
    super(`peer announced a frame of ${announced} bytes (limit ${MAX_FRAME})`);
  }
}

/**
 * Incremental decoder. Holds at most one partial frame (≤ MAX_FRAME + header) plus what the current
 * chunk carries; an over-size announcement throws before its payload is buffered.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private size = 0;

  constructor(private readonly maxFrame = MAX_FRAME) {}

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.size += chunk.length;
    const out: Frame[] = [];
    for (;;) {
      if (this.size < HEADER_BYTES) break;
      const head = this.peek(HEADER_BYTES);
      const len = head.readUInt32BE(0);
      if (len > this.maxFrame) throw new FrameTooLargeError(len);
      if (this.size < HEADER_BYTES + len) break;
      const whole = this.take(HEADER_BYTES + len);
      out.push({ type: whole.readUInt8(4), payload: whole.subarray(HEADER_BYTES) });
    }
    return out;
  }

  get buffered(): number {
    return this.size;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!.subarray(0, n);
    const all = Buffer.concat(this.chunks);
    this.chunks = [all];
    return all.subarray(0, n);
  }

  private take(n: number): Buffer {
    let first = this.chunks[0]!;
    if (first.length < n) {
      first = Buffer.concat(this.chunks);
      this.chunks = [first];
    }
    const out = first.subarray(0, n);
    const rest = first.subarray(n);
    if (rest.length > 0) this.chunks[0] = rest;
    else this.chunks.shift();
    this.size -= n;
    return out;
  }
}

const LABEL = 'portcullis-agent-v1';

export function hostMac(key: Buffer, agentNonce: Buffer, hostNonce: Buffer): string {
  return createHmac('sha256', key).update(`${LABEL}|host|`).update(agentNonce).update(hostNonce).digest('hex');
}

export function agentMac(key: Buffer, hostNonce: Buffer, agentNonce: Buffer): string {
  return createHmac('sha256', key).update(`${LABEL}|agent|`).update(hostNonce).update(agentNonce).digest('hex');
}

export function macEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Bounded collector for one output stream: keeps the first `cap` bytes, counts the rest. */
export class CappedBuffer {
  private readonly parts: Buffer[] = [];
  private kept = 0;
  dropped = 0;

  constructor(readonly cap: number) {}

  push(chunk: Buffer): void {
    const room = this.cap - this.kept;
    if (room <= 0) {
      this.dropped += chunk.length;
      return;
    }
    if (chunk.length <= room) {
      this.parts.push(Buffer.from(chunk));
      this.kept += chunk.length;
    } else {
      this.parts.push(Buffer.from(chunk.subarray(0, room)));
      this.kept += room;
      this.dropped += chunk.length - room;
    }
  }

  get size(): number {
    return this.kept;
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.parts, this.kept);
  }
}
