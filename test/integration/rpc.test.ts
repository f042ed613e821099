import { randomBytes } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { hostname } from 'node:os';
import request from 'supertest';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startEchoWorker } from '../../examples/echo-worker.js';
import { REPLY_MODE, waitFor } from '../helpers/bridge.js';
import { AMQP_URL, startRawWorker, uniqueName } from '../helpers/broker.js';
import { useEchoBridge } from '../helpers/fixture.js';

const fixture = useEchoBridge();
const { echoQueue } = fixture;
/** What the bridge generates when the caller sends none it can keep: a version 4 UUID. */
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('POST /rpc/:queue through the sample echo worker', () => {
  it('returns the worker reply to a JSON request, byte for byte with its content type', async () => {
    const body = '{"hi":1,"nested":{"list":[1,2,3]},"text":"grüße"}';
    const res = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${echoQueue}`)
      .set('Content-Type', 'application/json; charset=utf-8')
      .send(body);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(res.text).toBe(body);
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.headers['server-timing']).toMatch(/^rpc;dur=\d+\.\d{2}$/);
  });

  it('echoes a text body with its content encoding', async () => {
    const res = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${echoQueue}`)
      .set('Content-Type', 'text/plain')
      .set('Content-Encoding', 'identity')
      .send('plain text, not parsed');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('text/plain');
    expect(res.headers['content-encoding']).toBe('identity');
    expect(res.text).toBe('plain text, not parsed');
  });

  it('forwards a binary body byte for byte, including bytes that are not valid UTF-8', async () => {
    const body = Buffer.concat([Buffer.from([0x00, 0xff, 0xfe, 0xc3, 0x28]), randomBytes(64 * 1024)]);
    const res = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${echoQueue}`)
      .set('Content-Type', 'application/octet-stream')
      .responseType('blob')
      .send(body);
    expect(res.status).toBe(200);
    expect(Buffer.compare(res.body as Buffer, body)).toBe(0);
  });

  it('answers with the status the worker sets in http-status and returns reply headers as Amqp-Header-*', async () => {
    const res = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${echoQueue}`)
      .set('Amqp-Header-Reply-Status', '201')
      .set('Content-Type', 'text/plain')
      .send('created');
    expect(res.status).toBe(201);
    expect(res.text).toBe('created');
    expect(res.headers['amqp-header-echoed-bytes']).toBe('7');
    // The sample worker names itself by its host name.
    expect(res.headers['amqp-header-worker']).toBe(hostname());
  });

  it('keeps a sane X-Request-Id from the caller and echoes it', async () => {
    const res = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${echoQueue}`)
      .set('X-Request-Id', 'abc-123')
      .send('x');
    expect(res.headers['x-request-id']).toBe('abc-123');
    const replaced = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${echoQueue}`)
      .set('X-Request-Id', 'has spaces and "quotes"')
      .send('x');
    // Replaced by one of the bridge's own, not dropped.
    expect(replaced.headers['x-request-id']).toMatch(UUID_V4);
  });

  it('gives 200 concurrent requests each its own reply', async () => {
    const agent = request(fixture.bridge.baseUrl);
    const results = await Promise.all(
      Array.from({ length: 200 }, async (_, index) => {
        const res = await agent.post(`/rpc/${echoQueue}`).set('Content-Type', 'text/plain').send(`request-${index}`);
        return { index, status: res.status, text: res.text };
      }),
    );
    for (const result of results) {
      expect(result.status).toBe(200);
      expect(result.text).toBe(`request-${result.index}`);
    }
    expect(fixture.bridge.bridge.rpc.inFlightCount).toBe(0);
  });
});

describe('what the worker receives', () => {
  it('carries the request properties the contract names, and nothing else from the HTTP request', async () => {
    const queue = uniqueName('inspect');
    const received: Array<import('amqplib').ConsumeMessage> = [];
    await startRawWorker(fixture.broker, queue, (message, reply) => {
      received.push(message);
      reply(Buffer.from('ok'), {});
    });
    const before = Date.now();
    const res = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${queue}`)
      .set('Content-Type', 'application/json')
      .set('Amqp-Timeout', '5000')
      .set('Amqp-Priority', '7')
      .set('Amqp-Type', 'order.create')
      .set('Amqp-Header-Tenant', 'acme')
      .set('Authorization', 'Bearer secret-token')
      .set('Cookie', 'session=1')
      .set('X-Request-Id', 'req-42')
      .set('traceparent', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01')
      .send('{"a":1}');
    expect(res.status).toBe(200);
    const message = received[0];
    if (message === undefined) throw new Error('the worker got nothing');
    const { properties } = message;
    // Opaque to workers either way: the pseudo-queue as the broker rewrote it for this channel
    // (RabbitMQ: amq.rabbitmq.reply-to.<token>, LavinMQ: amq.direct.reply-to.<consumer tag>), or the
    // channel's own server-named queue.
    expect(properties.replyTo).toMatch(
      REPLY_MODE === 'queue' ? /^amq\.gen-/ : /^amq\.(rabbitmq|direct)\.reply-to\.\S+$/,
    );
    expect(properties.correlationId).toMatch(/^[0-9a-f-]{36}$/);
    expect(properties.contentType).toBe('application/json');
    expect(properties.priority).toBe(7);
    expect(properties.type).toBe('order.create');
    expect(properties.messageId).toBe('req-42');
    // What is left of the 5,000 ms timeout when it was published (the deadline counts from arrival).
    expect(Number(properties.expiration)).toBeLessThanOrEqual(5_000);
    expect(Number(properties.expiration)).toBeGreaterThan(4_500);
    expect(properties.deliveryMode).toBe(1);
    expect(properties.timestamp).toBeGreaterThanOrEqual(Math.floor(before / 1000));
    const deadline = Number(properties.headers?.['x-deadline']);
    expect(deadline).toBeGreaterThanOrEqual(before + 5000);
    expect(deadline).toBeLessThan(Date.now() + 5000);
    expect(properties.headers).toMatchObject({
      tenant: 'acme',
      traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    });
    const headerNames = Object.keys(properties.headers ?? {}).sort();
    expect(headerNames).toEqual(['tenant', 'traceparent', 'x-deadline']);
    expect(message.content.toString()).toBe('{"a":1}');
  });

  it('uses a fresh correlation id for every request, whatever the caller sends', async () => {
    const queue = uniqueName('corr');
    const ids: unknown[] = [];
    await startRawWorker(fixture.broker, queue, (message, reply) => {
      ids.push(message.properties.correlationId);
      reply(Buffer.alloc(0), {});
    });
    for (let i = 0; i < 3; i++) {
      await request(fixture.bridge.baseUrl).post(`/rpc/${queue}`).set('Amqp-Header-Correlation-Id', 'forged').send('');
    }
    expect(new Set(ids).size).toBe(3);
    for (const id of ids) expect(id).toMatch(UUID_V4);
  });
});

describe('routing through a named exchange', () => {
  it('delivers via exchange and routing key', async () => {
    const exchange = uniqueName('ex');
    const queue = uniqueName('bound');
    await fixture.broker.channel.assertExchange(exchange, 'direct', { durable: false, autoDelete: true });
    onTestFinished(async () => {
      await fixture.broker.channel.deleteExchange(exchange).catch(() => undefined);
    });
    const worker2 = await startEchoWorker({ url: AMQP_URL, queue, durable: false });
    try {
      await fixture.broker.channel.bindQueue(queue, exchange, 'orders.create');
      const res = await request(fixture.bridge.baseUrl)
        .post(`/rpc/${encodeURIComponent(exchange)}/orders.create`)
        .send('via exchange');
      expect(res.status).toBe(200);
      expect(res.text).toBe('via exchange');

      const unbound = await request(fixture.bridge.baseUrl).post(`/rpc/${exchange}/no.such.key`).send('x');
      expect(unbound.status).toBe(404);
      expect(unbound.body.type).toBe('tag:amqp-rpc-bridge,2026:problem/unroutable');
      expect(unbound.body.target).toBe(`${exchange}:no.such.key`);
    } finally {
      await worker2.close();
    }
  });

  it('answers 404 for a missing exchange without closing a reply channel', async () => {
    const closesBefore = await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true });
    const res = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${uniqueName('missing-ex')}/key`)
      .send('x');
    expect(res.status).toBe(404);
    expect(res.headers['content-type']).toBe('application/problem+json');
    expect(res.body.type).toBe('tag:amqp-rpc-bridge,2026:problem/exchange-not-found');
    expect(await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true })).toBe(closesBefore);
    expect(fixture.bridge.bridge.session.allChannelsOpen).toBe(true);
    const good = await request(fixture.bridge.baseUrl).post(`/rpc/${echoQueue}`).send('still fine');
    expect(good.status).toBe(200);
  });
});

describe('failures the caller must hear about at once', () => {
  it('answers 404 well under the timeout when no queue takes the message (basic.return)', async () => {
    const queue = uniqueName('nobody');
    const started = Date.now();
    const res = await request(fixture.bridge.baseUrl).post(`/rpc/${queue}`).set('Amqp-Timeout', '10000').send('hello?');
    const elapsed = Date.now() - started;
    expect(res.status).toBe(404);
    expect(res.headers['content-type']).toBe('application/problem+json');
    expect(res.body).toMatchObject({
      type: 'tag:amqp-rpc-bridge,2026:problem/unroutable',
      status: 404,
      target: queue,
      requestId: res.headers['x-request-id'],
    });
    expect(elapsed).toBeLessThan(1_000);
    expect(await fixture.bridge.metric('rpc_unroutable_total', { queue })).toBe(1);
  });

  it('answers 504 near the timeout when nobody replies', async () => {
    const queue = uniqueName('silent');
    await fixture.broker.channel.assertQueue(queue, { durable: false, autoDelete: false, expires: 30_000 });
    onTestFinished(async () => {
      await fixture.broker.channel.deleteQueue(queue).catch(() => undefined);
    });
    const started = Date.now();
    const res = await request(fixture.bridge.baseUrl).post(`/rpc/${queue}?timeout=300`).send('anyone?');
    const elapsed = Date.now() - started;
    expect(res.status).toBe(504);
    expect(res.body.type).toBe('tag:amqp-rpc-bridge,2026:problem/timeout');
    expect(elapsed).toBeGreaterThanOrEqual(295);
    expect(elapsed).toBeLessThan(1_500);
    expect(await fixture.bridge.metric('rpc_timeouts_total', { queue })).toBe(1);
  });

  it('drops and counts a reply that arrives after the timeout, and answers the next request normally', async () => {
    const queue = uniqueName('late');
    let replied = 0;
    await startRawWorker(fixture.broker, queue, (_message, reply) => {
      setTimeout(() => {
        reply(Buffer.from('too late'), {});
        replied += 1;
      }, 400);
    });
    const lateBefore = await fixture.bridge.metric('rpc_late_replies_total');
    const res = await request(fixture.bridge.baseUrl).post(`/rpc/${queue}`).set('Amqp-Timeout', '150').send('x');
    expect(res.status).toBe(504);
    await waitFor(() => replied === 1, 2_000, 'the late reply');
    await expect.poll(() => fixture.bridge.metric('rpc_late_replies_total')).toBe(lateBefore + 1);
    const good = await request(fixture.bridge.baseUrl).post(`/rpc/${echoQueue}`).send('next');
    expect(good.status).toBe(200);
    expect(good.text).toBe('next');
  });

  it('forgets a request whose HTTP client disconnects, and drops its reply when it comes', async () => {
    const queue = uniqueName('abandoned');
    let replied = false;
    await startRawWorker(fixture.broker, queue, (_message, reply) => {
      setTimeout(() => {
        reply(Buffer.from('nobody listens'), {});
        replied = true;
      }, 500);
    });
    const lateBefore = await fixture.bridge.metric('rpc_late_replies_total');
    const url = new URL(`/rpc/${queue}`, fixture.bridge.baseUrl);
    const req = httpRequest(url, { method: 'POST' });
    req.on('error', () => undefined);
    req.end('bye');
    await waitFor(() => fixture.bridge.bridge.rpc.inFlightCount === 1, 2_000, 'the request to be in flight');
    req.destroy();
    await waitFor(() => fixture.bridge.bridge.rpc.inFlightCount === 0, 1_000, 'the request to be forgotten');
    await expect
      .poll(() => fixture.bridge.metric('rpc_request_duration_seconds_count', { queue, outcome: 'cancelled' }))
      .toBe(1);
    await waitFor(() => replied, 2_000, 'the reply');
    await expect.poll(() => fixture.bridge.metric('rpc_late_replies_total')).toBe(lateBefore + 1);
  });

  it('answers 502 when the reply carries an http-status that is not 200-599', async () => {
    const queue = uniqueName('badstatus');
    await startRawWorker(fixture.broker, queue, (_message, reply) =>
      reply(Buffer.from('?'), { headers: { 'http-status': 99 } }),
    );
    const res = await request(fixture.bridge.baseUrl).post(`/rpc/${queue}`).send('x');
    expect(res.status).toBe(502);
    expect(res.body.type).toBe('tag:amqp-rpc-bridge,2026:problem/bad-reply');
  });

  it('answers a reply whose correlation id matches only once, even if the worker replies twice', async () => {
    const queue = uniqueName('twice');
    await startRawWorker(fixture.broker, queue, (_message, reply) => {
      reply(Buffer.from('first'), {});
      reply(Buffer.from('second'), {});
    });
    const lateBefore = await fixture.bridge.metric('rpc_late_replies_total');
    const res = await request(fixture.bridge.baseUrl).post(`/rpc/${queue}`).send('x');
    // The reply has no content_type: the bridge says application/octet-stream.
    expect(res.headers['content-type']).toBe('application/octet-stream');
    expect(Buffer.from(res.body as Buffer).toString()).toBe('first');
    await expect.poll(() => fixture.bridge.metric('rpc_late_replies_total')).toBe(lateBefore + 1);
  });
});

describe('one deadline per call', () => {
  it('counts the timeout from when the request arrived: x-deadline, expiration and the 504 all agree', async () => {
    const seen: Array<{ deadline: number; expiration: number; at: number }> = [];
    const queue = uniqueName('deadline');
    await startRawWorker(fixture.broker, queue, (message) => {
      // Never answers: the caller's 504 comes from the one deadline.
      seen.push({
        deadline: Number(message.properties.headers?.['x-deadline']),
        expiration: Number(message.properties.expiration),
        at: Date.now(),
      });
    });
    const { port } = new URL(fixture.bridge.baseUrl);
    const sentAt = Date.now();
    // The headers arrive now, the body 600 ms later: those 600 ms are part of the 1,000 ms timeout.
    const answer = new Promise<{ status: number; at: number }>((resolve, reject) => {
      const req = httpRequest(
        {
          port,
          host: '127.0.0.1',
          method: 'POST',
          path: `/rpc/${queue}`,
          headers: { 'Content-Length': 4, 'Amqp-Timeout': '1000' },
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0, at: Date.now() }));
        },
      );
      req.on('error', reject);
      req.flushHeaders();
      setTimeout(() => req.end('late'), 600);
    });
    const { status, at } = await answer;
    expect(status).toBe(504);
    expect(at - sentAt).toBeGreaterThanOrEqual(950);
    expect(at - sentAt).toBeLessThan(1_300);
    const [message] = seen;
    if (message === undefined) throw new Error('the worker got nothing');
    // Not granted twice: the deadline is arrival + 1,000 ms, and only what is left of it is the expiration.
    expect(message.deadline - sentAt).toBeGreaterThanOrEqual(990);
    expect(message.deadline - sentAt).toBeLessThan(1_100);
    expect(message.expiration).toBeGreaterThan(0);
    expect(message.expiration).toBeLessThanOrEqual(1_000 - 550);
  });
});
