import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { agentMac, CappedBuffer, encodeFrame, encodeJson, FrameDecoder, FrameTooLargeError, FrameType, hostMac, macEqual, MAX_FRAME } from './protocol.js';

describe('frames', () => {
  it('decode whatever the chunking', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 1, max: 7 }), fc.uint8Array({ maxLength: 300 })), { maxLength: 10 }),
        fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 20 }),
        (frames, cuts) => {
          const wire = Buffer.concat(frames.map(([t, p]) => encodeFrame(t, Buffer.from(p))));
          const d = new FrameDecoder();
          const got: { type: number; payload: Buffer }[] = [];
          let off = 0;
          let i = 0;
          while (off < wire.length) {
            const n = cuts[i++ % cuts.length]!;
            got.push(...d.push(wire.subarray(off, off + n)));
            off += n;
          }
          expect(got.map((f) => [f.type, [...f.payload]])).toEqual(frames.map(([t, p]) => [t, [...p]]));
          expect(d.buffered).toBe(0);
        },
      ),
    );
  });

  it('refuses an over-size announcement before buffering its payload', () => {
    const d = new FrameDecoder();
    const head = Buffer.alloc(5);
    head.writeUInt32BE(MAX_FRAME + 1, 0);
    head.writeUInt8(FrameType.stdout, 4);
    expect(() => d.push(head)).toThrow(FrameTooLargeError);
    expect(() => encodeFrame(FrameType.data, Buffer.alloc(MAX_FRAME + 1))).toThrow(RangeError);
  });

  it('JSON frames', () => {
    const [f] = new FrameDecoder().push(encodeJson({ t: 'x', n: 1 }));
    expect(f!.type).toBe(FrameType.json);
    expect(JSON.parse(f!.payload.toString())).toEqual({ t: 'x', n: 1 });
  });
});

describe('channel MACs', () => {
  const key = Buffer.alloc(32, 7);
  const a = Buffer.alloc(32, 1);
  const h = Buffer.alloc(32, 2);

  it('differ by role, nonce order and key', () => {
    expect(hostMac(key, a, h)).not.toBe(agentMac(key, a, h));
    expect(hostMac(key, a, h)).not.toBe(hostMac(key, h, a));
    expect(hostMac(key, a, h)).not.toBe(hostMac(Buffer.alloc(32, 8), a, h));
    expect(macEqual(hostMac(key, a, h), hostMac(key, a, h))).toBe(true);
    expect(macEqual('ab', 'abc')).toBe(false);
  });

  it('match the agent implementation (HMAC-SHA256 over label|role|nonces)', async () => {
    const { createHmac } = await import('node:crypto');
    const want = createHmac('sha256', key).update(Buffer.concat([Buffer.from('portcullis-agent-v1|host|'), a, h])).digest('hex');
    expect(hostMac(key, a, h)).toBe(want);
  });
});

describe('CappedBuffer', () => {
  it('keeps the first cap bytes and counts the rest', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 100 }), fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 10 }), (cap, chunks) => {
        const b = new CappedBuffer(cap);
        for (const c of chunks) b.push(Buffer.from(c));
        const all = Buffer.concat(chunks.map((c) => Buffer.from(c)));
        expect(b.toBuffer()).toEqual(all.subarray(0, cap));
        expect(b.dropped).toBe(Math.max(0, all.length - cap));
      }),
    );
  });

  it('copies what it keeps (a reused chunk buffer cannot alter it)', () => {
    const b = new CappedBuffer(4);
    const chunk = Buffer.from('abcd');
    b.push(chunk);
    chunk.fill(0);
    expect(b.toBuffer().toString()).toBe('abcd');
  });
});
