import type { ConsumeMessage } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { startRawWorker, uniqueName } from '../helpers/broker.js';
import { useEchoBridge } from '../helpers/fixture.js';
import { rawHttp } from '../helpers/raw-http.js';

const fixture = useEchoBridge({ HTTP_HEADERS_TIMEOUT_MS: '500', HTTP_REQUEST_TIMEOUT_MS: '1000' });

describe('slow clients are cut off', () => {
  it('when the body arrives one byte at a time, past the request timeout', async () => {
    // A worker on the queue the request names: a body cut off by the timeout must never reach it.
    const queue = uniqueName('slow-body');
    const received: ConsumeMessage[] = [];
    await startRawWorker(fixture.broker, queue, (message, reply) => {
      received.push(message);
      reply(Buffer.from('a partial body was published'), {});
    });
    const head = `POST /rpc/${queue} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n`;
    const {
      text: response,
      responses,
      afterMs,
    } = await rawHttp(fixture.bridge.server.port, head, { trickle: { text: 'x'.repeat(100), everyMs: 100 } });
    // rawHttp resolves when the server closes the socket (or gives up after 10 s): the bridge closed it.
    expect(afterMs).toBeLessThan(4_000);
    expect(response).toMatch(/^HTTP\/1\.1 408 /);
    expect(responses).toHaveLength(1);
    expect(responses[0]?.headers.connection).toBe('close');
    expect(responses[0]?.headers['content-type']).toBe('application/problem+json');
    // A request id like every other answer, in the header and the problem document.
    const requestId = responses[0]?.headers['x-request-id'];
    expect(requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(JSON.parse(responses[0]?.body ?? '')).toMatchObject({ status: 408, requestId });
    // Time for a publish of the bytes that had arrived to come through: none must.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(received.map((message) => message.content.toString())).toEqual([]);
  });

  it('when the headers arrive one byte at a time, past the headers timeout', async () => {
    const { text: response, afterMs } = await rawHttp(fixture.bridge.server.port, '', {
      trickle: { text: 'POST /rpc/slow.headers HTTP/1.1\r\nHost: x\r\n', everyMs: 100 },
    });
    expect(afterMs).toBeLessThan(3_000);
    expect(response).toMatch(/^HTTP\/1\.1 408 /);
  });
});
