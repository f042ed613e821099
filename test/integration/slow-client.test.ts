import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestBridge, type TestBridge } from '../helpers/bridge.js';

let bridge: TestBridge;

beforeAll(async () => {
  bridge = await startTestBridge({ HTTP_HEADERS_TIMEOUT_MS: '500', HTTP_REQUEST_TIMEOUT_MS: '1000' });
});

afterAll(async () => {
  await bridge?.close();
});

/** Sends `head` at once, then `trickle` one byte every `everyMs`; resolves with what came back and when. */
function slowClient(head: string, trickle: string, everyMs: number): Promise<{ response: string; afterMs: number }> {
  return new Promise((resolve) => {
    const started = Date.now();
    const socket = connect(bridge.server.port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let sent = 0;
    const timer = setInterval(() => {
      if (sent < trickle.length && socket.writable) socket.write(trickle[sent++] ?? '');
    }, everyMs);
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearInterval(timer);
      resolve({ response: Buffer.concat(chunks).toString('utf8'), afterMs: Date.now() - started });
    });
    socket.write(head);
  });
}

describe('slow clients are cut off', () => {
  it('when the body arrives one byte at a time, past the request timeout', async () => {
    const { response, afterMs } = await slowClient(
      'POST /rpc/slow.body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n',
      'x'.repeat(100),
      100,
    );
    expect(afterMs).toBeLessThan(4_000);
    expect(response).toMatch(/^HTTP\/1\.1 408 /);
    expect(response).toContain('application/problem+json');
    expect(bridge.bridge.rpc.inFlightCount).toBe(0);
  });

  it('when the headers arrive one byte at a time, past the headers timeout', async () => {
    const { response, afterMs } = await slowClient('', 'POST /rpc/slow.headers HTTP/1.1\r\nHost: x\r\n', 100);
    expect(afterMs).toBeLessThan(3_000);
    expect(response).toMatch(/^HTTP\/1\.1 408 /);
  });
});
