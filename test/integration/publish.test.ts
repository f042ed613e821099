/**
 * POST /publish/...: fire-and-forget through the same request mapping as an RPC, answered once the
 * broker has confirmed the message (202), returned it (404), refused it (503) or not confirmed it in
 * time (504).
 */
import type { ConsumeMessage } from 'amqplib';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { startTestBridge, type TestBridge, waitFor } from '../helpers/bridge.js';
import { AMQP_URL, connectTestBroker, type TestBroker, uniqueName } from '../helpers/broker.js';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js';

let broker: TestBroker;
let bridge: TestBridge;

beforeAll(async () => {
  broker = await connectTestBroker();
  bridge = await startTestBridge();
});

afterAll(async () => {
  await bridge?.close();
  await broker?.close();
});

/** A queue of the test's own, and what arrives on it. */
async function consumedQueue(options: { durable?: boolean } = {}) {
  const queue = uniqueName('published');
  const received: ConsumeMessage[] = [];
  await broker.channel.assertQueue(queue, { durable: options.durable ?? false, autoDelete: false });
  await broker.channel.consume(queue, (message) => message && received.push(message), { noAck: true });
  return { queue, received };
}

describe('POST /publish/{queue}', () => {
  it('answers 202 once the broker confirmed it, with the RPC mapping, persistent and without reply_to', async () => {
    const { queue, received } = await consumedQueue();
    const res = await request(bridge.baseUrl)
      .post(`/publish/${queue}`)
      .set('Content-Type', 'application/json')
      .set('Amqp-Header-Tenant', 'acme')
      .set('Amqp-Priority', '3')
      .set('Amqp-Type', 'order.created')
      .set('Amqp-Message-Id', 'order-7')
      .set('Authorization', 'Bearer not-forwarded')
      .set('X-Request-Id', 'pub-1')
      .send('{"order":7}');
    expect(res.status).toBe(202);
    expect(res.body).toEqual({ status: 'accepted', requestId: 'pub-1' });
    expect(res.headers['x-request-id']).toBe('pub-1');
    await waitFor(() => received.length === 1, 5_000, 'the message to arrive');
    const [message] = received as [ConsumeMessage];
    expect(message.content.toString()).toBe('{"order":7}');
    const { properties } = message;
    expect(properties.deliveryMode).toBe(2);
    expect(properties.replyTo).toBeUndefined();
    expect(properties.expiration).toBeUndefined();
    expect(properties.contentType).toBe('application/json');
    expect(properties.priority).toBe(3);
    expect(properties.type).toBe('order.created');
    expect(properties.messageId).toBe('order-7');
    expect(properties.correlationId).toMatch(/^[0-9a-f-]{36}$/);
    expect(Object.keys(properties.headers ?? {}).sort()).toEqual(['tenant', 'traceparent']);
    expect(properties.headers?.tenant).toBe('acme');
    expect(await bridge.metric('publish_request_duration_seconds_count', { queue, outcome: 'ok' })).toBe(1);
    expect(
      await bridge.metric('rpc_request_duration_seconds_count', { queue, outcome: 'ok' }, { absentIsZero: true }),
    ).toBe(0);
  });

  it('publishes non-persistent with Amqp-Delivery-Mode: 1, and refuses any other value with 400', async () => {
    const { queue, received } = await consumedQueue();
    const transient = await request(bridge.baseUrl).post(`/publish/${queue}`).set('Amqp-Delivery-Mode', '1').send('t');
    expect(transient.status).toBe(202);
    await waitFor(() => received.length === 1, 5_000, 'the message to arrive');
    expect(received[0]?.properties.deliveryMode).toBe(1);
    const bad = await request(bridge.baseUrl).post(`/publish/${queue}`).set('Amqp-Delivery-Mode', '3').send('t');
    expect(bad.status).toBe(400);
    expect(bad.body.detail).toContain('Amqp-Delivery-Mode');
  });

  it('answers 404 unroutable when no queue takes it', async () => {
    const res = await request(bridge.baseUrl)
      .post(`/publish/${uniqueName('nobody')}`)
      .send('x');
    expect(res.status).toBe(404);
    expect(res.body.type).toBe(`${PROBLEM_TYPE_PREFIX}unroutable`);
  });

  it('answers 503 broker-rejected when the queue refuses it (x-overflow: reject-publish)', async () => {
    const queue = uniqueName('full');
    await broker.channel.assertQueue(queue, {
      durable: false,
      autoDelete: false,
      arguments: { 'x-max-length': 1, 'x-overflow': 'reject-publish' },
    });
    try {
      expect((await request(bridge.baseUrl).post(`/publish/${queue}`).send('first')).status).toBe(202);
      const refused = await request(bridge.baseUrl).post(`/publish/${queue}`).send('second');
      expect(refused.status).toBe(503);
      expect(refused.body.type).toBe(`${PROBLEM_TYPE_PREFIX}broker-rejected`);
      expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    } finally {
      await broker.channel.deleteQueue(queue);
    }
  });

  it('answers 405 with Allow: POST for other methods', async () => {
    const res = await request(bridge.baseUrl).get('/publish/anything');
    expect(res.status).toBe(405);
    expect(res.headers.allow).toBe('POST');
  });
});

describe('POST /publish/{exchange}/{routingKey}', () => {
  it('publishes through the exchange (202), and answers 404 for a missing exchange', async () => {
    const { queue, received } = await consumedQueue();
    const exchange = uniqueName('events');
    await broker.channel.assertExchange(exchange, 'topic', { durable: false });
    await broker.channel.bindQueue(queue, exchange, 'order.*');
    try {
      // The first request to an exchange rides its probe channel; the second the shared ones.
      for (const body of ['one', 'two']) {
        const res = await request(bridge.baseUrl).post(`/publish/${exchange}/order.created`).send(body);
        expect(res.status).toBe(202);
      }
      await waitFor(() => received.length === 2, 5_000, 'both messages to arrive');
      expect(received.map((message) => message.content.toString())).toEqual(['one', 'two']);
      const missing = await request(bridge.baseUrl)
        .post(`/publish/${uniqueName('no-exchange')}/k`)
        .send('x');
      expect(missing.status).toBe(404);
      expect(missing.body.type).toBe(`${PROBLEM_TYPE_PREFIX}exchange-not-found`);
    } finally {
      await broker.channel.deleteExchange(exchange);
    }
  });
});

describe('a publish the broker does not confirm in time', () => {
  let proxy: TcpProxy;
  let silent: TestBridge;

  beforeAll(async () => {
    proxy = await startTcpProxy(Number(new URL(AMQP_URL).port || 5672));
    silent = await startTestBridge({ AMQP_URL: proxy.via(AMQP_URL) });
  });

  afterAll(async () => {
    proxy?.heal();
    await silent?.close();
    await proxy?.close();
  });

  it('answers 504 at its timeout: it may or may not be queued', async () => {
    const { queue } = await consumedQueue();
    proxy.silence();
    const started = Date.now();
    const res = await request(silent.baseUrl).post(`/publish/${queue}`).set('Amqp-Timeout', '500').send('x');
    expect(res.status).toBe(504);
    expect(res.body.type).toBe(`${PROBLEM_TYPE_PREFIX}timeout`);
    expect(res.body.detail).toContain('did not confirm');
    expect(Date.now() - started).toBeGreaterThanOrEqual(450);
    expect(Date.now() - started).toBeLessThan(1_500);
  });
});
