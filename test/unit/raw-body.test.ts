import type { IncomingMessage } from 'node:http';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { HttpProblem } from '../../src/http/problems.js';
import { ClientClosedError, readRawBody } from '../../src/http/raw-body.js';

/** A request stream with these headers, fed the chunks one by one. */
function request(headers: Record<string, string>, chunks: readonly Buffer[]): IncomingMessage {
  const stream = new PassThrough();
  Object.assign(stream, { headers });
  setImmediate(() => {
    for (const chunk of chunks) stream.write(chunk);
    stream.end();
  });
  return stream as unknown as IncomingMessage;
}

function pieces(body: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < body.length; at += size) out.push(body.subarray(at, at + size));
  return out;
}

describe('readRawBody', () => {
  const body = Buffer.from(Array.from({ length: 200_000 }, (_, i) => (i * 7) % 251));

  it('gives back a body of many chunks byte for byte, with Content-Length and without', async () => {
    const declared = request({ 'content-length': String(body.length) }, pieces(body, 65_536));
    expect((await readRawBody(declared, 1 << 20)).equals(body)).toBe(true);
    const chunked = request({ 'transfer-encoding': 'chunked' }, pieces(body, 65_536));
    expect((await readRawBody(chunked, 1 << 20)).equals(body)).toBe(true);
  });

  it('gives back a single-chunk body as it came', async () => {
    const small = Buffer.from('hello');
    const read = await readRawBody(request({ 'content-length': '5' }, [small]), 100);
    expect(read.toString()).toBe('hello');
  });

  it('refuses a body past the limit, declared or streamed, with 413', async () => {
    const declared = readRawBody(request({ 'content-length': String(body.length) }, []), 1000);
    await expect(declared).rejects.toSatisfy((err) => err instanceof HttpProblem && err.status === 413);
    const streamed = readRawBody(request({}, pieces(body, 65_536)), 100_000);
    await expect(streamed).rejects.toSatisfy((err) => err instanceof HttpProblem && err.status === 413);
  });

  it('reports a client that leaves halfway', async () => {
    const stream = new PassThrough();
    Object.assign(stream, { headers: { 'content-length': String(body.length) } });
    const read = readRawBody(stream as unknown as IncomingMessage, 1 << 20);
    stream.write(body.subarray(0, 70_000));
    setImmediate(() => stream.destroy());
    await expect(read).rejects.toBeInstanceOf(ClientClosedError);
  });
});
