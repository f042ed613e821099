import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestBridge, type TestBridge } from '../helpers/bridge.js';
import { rawHttp } from '../helpers/raw-http.js';

let bridge: TestBridge;

beforeAll(async () => {
  bridge = await startTestBridge({ HTTP_HEADERS_TIMEOUT_MS: '500', HTTP_REQUEST_TIMEOUT_MS: '1000' });
});

afterAll(async () => {
  await bridge?.close();
});

describe('slow clients are cut off', () => {
  it('when the body arrives one byte at a time, past the request timeout', async () => {
    const {
      text: response,
      responses,
      afterMs,
    } = await rawHttp(bridge.server.port, 'POST /rpc/slow.body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n', {
      trickle: { text: 'x'.repeat(100), everyMs: 100 },
    });
    expect(afterMs).toBeLessThan(4_000);
    expect(response).toMatch(/^HTTP\/1\.1 408 /);
    expect(responses[0]?.headers['content-type']).toBe('application/problem+json');
    // A request id like every other answer, in the header and the problem document.
    const requestId = responses[0]?.headers['x-request-id'];
    expect(requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(JSON.parse(responses[0]?.body ?? '')).toMatchObject({ status: 408, requestId });
    expect(bridge.bridge.rpc.inFlightCount).toBe(0);
  });

  it('when the headers arrive one byte at a time, past the headers timeout', async () => {
    const { text: response, afterMs } = await rawHttp(bridge.server.port, '', {
      trickle: { text: 'POST /rpc/slow.headers HTTP/1.1\r\nHost: x\r\n', everyMs: 100 },
    });
    expect(afterMs).toBeLessThan(3_000);
    expect(response).toMatch(/^HTTP\/1\.1 408 /);
  });
});
