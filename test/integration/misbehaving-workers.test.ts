import request from 'supertest';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { MAX_REPLY_HEADER_BYTES, MAX_REPLY_HEADERS } from '../../src/http/response-mapping.js';
import { REPLY_MODE, waitFor } from '../helpers/bridge.js';
import { AMQP_URL, connectTestBroker, startRawWorker, uniqueName } from '../helpers/broker.js';
import { brokerProduct } from '../helpers/broker-admin.js';
import { useEchoBridge } from '../helpers/fixture.js';
import { nestedTable, propertiesWithRawHeaders, RawAmqpPublisher } from '../helpers/raw-amqp-publisher.js';

const fixture = useEchoBridge();
const product = await brokerProduct();
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

/** An echo call the worker holds for `delayMs`, in flight once this resolves: the call beside the trouble. */
async function callBeside(body: string, delayMs: number): Promise<() => Promise<void>> {
  const answer = request(fixture.bridge.baseUrl)
    .post(`/rpc/${echoQueue}`)
    .set('Amqp-Header-Delay-Ms', String(delayMs))
    .set('Content-Type', 'text/plain')
    .send(body)
    .then((res) => res); // supertest sends only once awaited
  await waitFor(() => fixture.bridge.bridge.rpc.inFlightCount === 1, 5_000, 'the call beside to be in flight');
  return async () => {
    const res = await answer;
    expect([res.status, res.text]).toEqual([200, body]);
  };
}

/** What one call's failure must leave alone: the connection, its channels, and the next call. */
async function expectConnectionUnharmed(reconnectsBefore: number): Promise<void> {
  expect(fixture.bridge.bridge.session.isReady).toBe(true);
  expect(await fixture.bridge.metric('amqp_reconnects_total')).toBe(reconnectsBefore);
  expect(await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true })).toBe(0);
  const after = await request(fixture.bridge.baseUrl)
    .post(`/rpc/${echoQueue}`)
    .set('Content-Type', 'text/plain')
    .send('after');
  expect([after.status, after.text]).toEqual([200, 'after']);
}

describe('a failure while answering one call', () => {
  it('ends that call with 500 and nothing else: the connection and the other calls on it carry on', async () => {
    const reconnects = await fixture.bridge.metric('amqp_reconnects_total');
    const slowAnswered = await callBeside('slow', 300);
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
    await slowAnswered();
    await expectConnectionUnharmed(reconnects);
    const logged = fixture.bridge.logs.find(
      (line) => (line.err as { message?: string } | undefined)?.message === 'forced failure while answering',
    );
    expect(logged).toBeDefined();
  });
});

describe('a reply whose headers amqplib cannot decode', () => {
  it('fails its own call with 502 bad-reply; the connection, its channels and the call beside it carry on', async () => {
    const crafty = uniqueName('crafty');
    // Each reply goes out frame by frame: no client library encodes these.
    const publisher = await RawAmqpPublisher.open(AMQP_URL);
    onTestFinished(() => publisher.close());
    await startRawWorker(fixture.broker, crafty, (message) => {
      const table =
        message.properties.headers?.table === 'nested'
          ? nestedTable(5_000) // valid AMQP, delivered by every broker; amqplib's recursive decoder overflows the stack
          : Buffer.from('01615300000001', 'hex'); // a long string of one byte with none after it: LavinMQ delivers it
      const { correlationId, replyTo } = message.properties;
      publisher.publish('', String(replyTo), propertiesWithRawHeaders(table, String(correlationId)), Buffer.from('x'));
    });
    const reconnects = await fixture.bridge.metric('amqp_reconnects_total');
    const besideAnswered = await callBeside('beside', 400);

    const nested = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${crafty}`)
      .set('Amqp-Header-Table', 'nested')
      .set('Amqp-Timeout', '3000')
      .send('x');
    expect([nested.status, nested.body.type]).toEqual([502, `${PROBLEM_TYPE_PREFIX}bad-reply`]);
    expect(nested.body.detail).toContain('could not be decoded');
    // RabbitMQ refuses the broken table from its publisher (so the call times out); LavinMQ passes it on
    // through a queue, but drops the consumer's whole connection delivering it as a direct reply (its bug,
    // nothing a client can catch: docs/brokers.md), so there the broken table is not sent.
    if (product === 'rabbitmq' || REPLY_MODE === 'queue') {
      const broken = await request(fixture.bridge.baseUrl)
        .post(`/rpc/${crafty}`)
        .set('Amqp-Header-Table', 'broken')
        .set('Amqp-Timeout', '1000')
        .send('x');
      // 502 when it arrives undecodable, 504 when it never arrives as a reply: either way this call's alone.
      expect([502, 504]).toContain(broken.status);
    }

    await besideAnswered();
    await expectConnectionUnharmed(reconnects);
  });
});
