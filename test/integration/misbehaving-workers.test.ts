import request from 'supertest';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { MAX_REPLY_HEADER_BYTES, MAX_REPLY_HEADERS } from '../../src/http/response-mapping.js';
import { waitFor } from '../helpers/bridge.js';
import { connectTestBroker, startRawWorker, uniqueName } from '../helpers/broker.js';
import { useEchoBridge } from '../helpers/fixture.js';

const fixture = useEchoBridge();
const { echoQueue } = fixture;

describe('misbehaving workers never disturb other requests', () => {
  it('survives replies without a correlation id, with a forged one, huge ones, and a worker that dies', async () => {
    const rude = uniqueName('rude');
    await startRawWorker(fixture.broker, rude, (message, reply) => {
      const mode = String(message.properties.headers?.mode);
      if (mode === 'no-correlation-id') {
        reply(Buffer.from('who am I'), {}, 'without-correlation-id');
      } else if (mode === 'forged-correlation-id') {
        reply(Buffer.from('not yours'), { correlationId: 'forged-not-a-pending-id' });
      } else if (mode === 'huge') {
        reply(Buffer.alloc(8 * 1024 * 1024, 7), {});
      }
    });
    const dying = uniqueName('dying');
    const doomed = await connectTestBroker();
    // It closes itself when the request arrives; if none does (a failure), it must not outlive the test.
    onTestFinished(() => doomed.close());
    await startRawWorker(doomed, dying, () => {
      // Takes the request and dies before answering.
      void doomed.close();
    });

    const late = await fixture.bridge.metric('rpc_late_replies_total');
    const results = await Promise.all([
      request(fixture.bridge.baseUrl)
        .post(`/rpc/${rude}`)
        .set('Amqp-Header-Mode', 'no-correlation-id')
        .set('Amqp-Timeout', '800')
        .send('x'),
      request(fixture.bridge.baseUrl)
        .post(`/rpc/${rude}`)
        .set('Amqp-Header-Mode', 'forged-correlation-id')
        .set('Amqp-Timeout', '800')
        .send('x'),
      request(fixture.bridge.baseUrl)
        .post(`/rpc/${rude}`)
        .set('Amqp-Header-Mode', 'huge')
        .responseType('blob')
        .send('x'),
      request(fixture.bridge.baseUrl).post(`/rpc/${dying}`).set('Amqp-Timeout', '800').send('x'),
      ...Array.from({ length: 20 }, (_, i) =>
        request(fixture.bridge.baseUrl).post(`/rpc/${echoQueue}`).set('Content-Type', 'text/plain').send(`fine-${i}`),
      ),
    ]);
    const [noId, forgedId, huge, died, ...fine] = results;
    expect(noId?.status).toBe(504);
    expect(forgedId?.status).toBe(504);
    expect(huge?.status).toBe(200);
    expect((huge?.body as Buffer | undefined)?.length).toBe(8 * 1024 * 1024);
    expect(died?.status).toBe(504);
    fine.forEach((res, i) => {
      expect(res.status).toBe(200);
      expect(res.text).toBe(`fine-${i}`);
    });
    expect(await fixture.bridge.metric('rpc_late_replies_total')).toBe(late + 2);
    expect(await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true })).toBe(0);
    expect(fixture.bridge.bridge.session.allChannelsOpen).toBe(true);
    expect(fixture.bridge.bridge.rpc.inFlightCount).toBe(0);
  });
});

describe('reply headers', () => {
  it('answers 502 bad-reply when a reply brings more headers than a caller could read, and serves at the cap', async () => {
    const noisy = uniqueName('noisy');
    await startRawWorker(fixture.broker, noisy, (message, reply) => {
      const mode = String(message.properties.headers?.mode);
      const headers: Record<string, string> = {};
      // amqplib refuses header tables over 64 KiB, so 60 KiB is about the largest a worker can send.
      if (mode === 'one-huge') headers.big = 'x'.repeat(60 * 1024);
      const count = mode === 'thousands' ? 3_000 : mode === 'at-cap' ? MAX_REPLY_HEADERS : 0;
      for (let i = 0; i < count; i++) headers[`h${i}`] = 'v';
      reply(Buffer.from(mode), { headers });
    });
    const call = (mode: string) =>
      request(fixture.bridge.baseUrl)
        .post(`/rpc/${noisy}`)
        .set('Amqp-Header-Mode', mode)
        .set('Amqp-Timeout', '3000')
        .send('x');
    // Node's HTTP client, like undici, refuses a header section over 16 KiB: these were transport errors.
    for (const mode of ['one-huge', 'thousands']) {
      const res = await call(mode);
      expect(res.status, mode).toBe(502);
      expect(res.body.type).toBe(`${PROBLEM_TYPE_PREFIX}bad-reply`);
      expect(res.body.detail).toContain(`at most ${MAX_REPLY_HEADERS} headers and ${MAX_REPLY_HEADER_BYTES} bytes`);
    }
    const atCap = await call('at-cap');
    expect(atCap.status).toBe(200);
    expect(atCap.headers[`amqp-header-h${MAX_REPLY_HEADERS - 1}`]).toBe('v');
  });
});

describe('a failure while answering one call', () => {
  it('ends that call with 500 and nothing else: the connection and the other calls on it carry on', async () => {
    const reconnects = await fixture.bridge.metric('amqp_reconnects_total');
    const slow = request(fixture.bridge.baseUrl)
      .post(`/rpc/${echoQueue}`)
      .set('Amqp-Header-Delay-Ms', '300')
      .set('Content-Type', 'text/plain')
      .send('slow')
      .then((res) => res); // supertest sends only once awaited
    await waitFor(() => fixture.bridge.bridge.rpc.inFlightCount === 1, 5_000, 'the slow call to be in flight');
    // The next call's outcome is answered inside amqplib's consumer callback; make answering it throw.
    const observe = vi.spyOn(fixture.bridge.bridge.metrics, 'observeRpc').mockImplementationOnce(() => {
      throw new Error('forced failure while answering');
    });
    try {
      const failed = await request(fixture.bridge.baseUrl)
        .post(`/rpc/${echoQueue}`)
        .set('Content-Type', 'text/plain')
        .send('this one');
      expect(failed.status).toBe(500);
      expect(failed.body.type).toBe(`${PROBLEM_TYPE_PREFIX}internal`);
    } finally {
      observe.mockRestore();
    }
    const other = await slow;
    expect(other.status).toBe(200);
    expect(other.text).toBe('slow');
    expect(fixture.bridge.bridge.session.isConnected).toBe(true);
    expect(await fixture.bridge.metric('amqp_reconnects_total')).toBe(reconnects);
    expect(await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true })).toBe(0);
    const after = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${echoQueue}`)
      .set('Content-Type', 'text/plain')
      .send('after');
    expect(after.status).toBe(200);
    const logged = fixture.bridge.logs.find(
      (line) => (line.err as { message?: string } | undefined)?.message === 'forced failure while answering',
    );
    expect(logged).toBeDefined();
  });
});
