import { request as httpRequest } from 'node:http';
import request from 'supertest';
import { describe, expect, it } from 'vitest';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { startRawWorker, uniqueName } from '../helpers/broker.js';
import { brokerAdmin, drillIt } from '../helpers/broker-admin.js';
import { useEchoBridge } from '../helpers/fixture.js';
import { rawHttp } from '../helpers/raw-http.js';

const fixture = useEchoBridge({ MAX_BODY_BYTES: '1024', RPC_MAX_TIMEOUT_MS: '60000' });
const { echoQueue } = fixture;

interface BadRequest {
  readonly name: string;
  readonly path: string;
  readonly headers?: Record<string, string>;
  readonly body?: string | Buffer;
  readonly status: number;
  readonly type: string;
}

const manyHeaders = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`Amqp-Header-H${i}`, 'v']));

const BAD_REQUESTS: BadRequest[] = [
  { name: 'a queue name starting with amq.', path: '/rpc/amq.gen-abc', status: 400, type: 'invalid-request' },
  {
    name: "another caller's direct reply-to pseudo-queue",
    path: `/rpc/${encodeURIComponent('amq.rabbitmq.reply-to.g1h2AA==')}`,
    status: 400,
    type: 'invalid-request',
  },
  {
    name: 'a reply-to routing key through amq.direct',
    path: '/rpc/amq.direct/amq.rabbitmq.reply-to.abc',
    status: 400,
    type: 'invalid-request',
  },
  {
    name: 'a broker-internal amq. exchange',
    path: '/rpc/amq.rabbitmq.trace/key',
    status: 400,
    type: 'invalid-request',
  },
  { name: 'a queue name over 255 bytes', path: `/rpc/${'q'.repeat(256)}`, status: 400, type: 'invalid-request' },
  {
    name: 'a queue name of 128 two-byte characters (256 bytes)',
    path: `/rpc/${encodeURIComponent('é'.repeat(128))}`,
    status: 400,
    type: 'invalid-request',
  },
  {
    name: 'an empty queue name',
    path: '/rpc/',
    status: 404,
    type: 'not-found',
  },
  { name: 'a control character in the name', path: '/rpc/bad%0Aname', status: 400, type: 'invalid-request' },
  { name: 'a malformed percent-escape', path: '/rpc/bad%zzname', status: 400, type: 'invalid-request' },
  {
    name: 'a timeout that is not a number',
    path: '/rpc/q',
    headers: { 'Amqp-Timeout': 'soon' },
    status: 400,
    type: 'invalid-request',
  },
  { name: 'a zero timeout', path: '/rpc/q', headers: { 'Amqp-Timeout': '0' }, status: 400, type: 'invalid-request' },
  { name: 'a negative timeout', path: '/rpc/q?timeout=-1', status: 400, type: 'invalid-request' },
  { name: 'a fractional timeout', path: '/rpc/q?timeout=1.5', status: 400, type: 'invalid-request' },
  { name: 'an exponent timeout', path: '/rpc/q?timeout=1e3', status: 400, type: 'invalid-request' },
  { name: 'a timeout above the maximum', path: '/rpc/q?timeout=60001', status: 400, type: 'invalid-request' },
  { name: 'two timeouts in the query', path: '/rpc/q?timeout=5&timeout=6', status: 400, type: 'invalid-request' },
  {
    name: 'a priority above 255',
    path: '/rpc/q',
    headers: { 'Amqp-Priority': '256' },
    status: 400,
    type: 'invalid-request',
  },
  {
    name: 'a negative priority',
    path: '/rpc/q',
    headers: { 'Amqp-Priority': '-1' },
    status: 400,
    type: 'invalid-request',
  },
  {
    name: 'an Amqp-Type over 255 bytes',
    path: '/rpc/q',
    headers: { 'Amqp-Type': 't'.repeat(256) },
    status: 400,
    type: 'invalid-request',
  },
  {
    name: 'too many Amqp-Header-* headers',
    path: '/rpc/q',
    headers: manyHeaders,
    status: 400,
    type: 'invalid-request',
  },
  {
    name: 'a body over MAX_BODY_BYTES',
    path: '/rpc/q',
    body: Buffer.alloc(1025, 1),
    status: 413,
    type: 'payload-too-large',
  },
  { name: 'an unknown path', path: '/nowhere', status: 404, type: 'not-found' },
];

describe('invalid input is refused at the edge with a problem document, and harms nothing', () => {
  for (const bad of BAD_REQUESTS) {
    it(`answers ${bad.status} for ${bad.name}, then serves a good request`, async () => {
      const closesBefore = await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true });
      let req = request(fixture.bridge.baseUrl).post(bad.path);
      for (const [name, value] of Object.entries(bad.headers ?? {})) req = req.set(name, value);
      const res = await req.send(bad.body ?? 'x');
      expect(res.status).toBe(bad.status);
      expect(res.headers['content-type']).toBe('application/problem+json');
      expect(res.body).toMatchObject({
        type: `tag:amqp-rpc-bridge,2026:problem/${bad.type}`,
        status: bad.status,
        requestId: res.headers['x-request-id'],
      });
      expect(typeof res.body.detail).toBe('string');

      const good = await request(fixture.bridge.baseUrl)
        .post(`/rpc/${echoQueue}`)
        .set('Content-Type', 'text/plain')
        .send('ok');
      expect(good.status).toBe(200);
      expect(good.text).toBe('ok');
      expect(await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true })).toBe(closesBefore);
      expect(fixture.bridge.bridge.session.allChannelsOpen).toBe(true);
    });
  }

  it('answers 405 with Allow: POST for other methods on /rpc paths', async () => {
    const res = await request(fixture.bridge.baseUrl).get(`/rpc/${echoQueue}`);
    expect(res.status).toBe(405);
    expect(res.headers.allow).toBe('POST');
    expect(res.body.type).toBe('tag:amqp-rpc-bridge,2026:problem/method-not-allowed');
  });

  it('refuses a chunked body that grows past the limit while streaming', async () => {
    const status = await new Promise<number | undefined>((resolve, reject) => {
      const req = httpRequest(new URL(`/rpc/${echoQueue}`, fixture.bridge.baseUrl), { method: 'POST' });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode);
      });
      req.on('error', reject);
      // No Content-Length: Node sends these as chunks, so the limit is only found while streaming.
      for (let i = 0; i < 8; i++) req.write(Buffer.alloc(512, i));
      req.end();
    });
    expect(status).toBe(413);
  });

  it('counts refused requests as rejected in the metrics', async () => {
    const before = await fixture.bridge.metric(
      'rpc_request_duration_seconds_count',
      {
        queue: 'q',
        outcome: 'rejected',
      },
      { absentIsZero: true },
    );
    await request(fixture.bridge.baseUrl).post('/rpc/q?timeout=0').send('x');
    expect(await fixture.bridge.metric('rpc_request_duration_seconds_count', { queue: 'q', outcome: 'rejected' })).toBe(
      before + 1,
    );
  });

  it('sends Amqp-Header-* values written in UTF-8 to the worker as the same text', async () => {
    const queue = uniqueName('utf8');
    await startRawWorker(fixture.broker, queue, (message, reply) =>
      reply(Buffer.from(String(message.properties.headers?.greeting)), { contentType: 'text/plain; charset=utf-8' }),
    );
    // Raw socket: HTTP client libraries refuse non-ASCII header bytes, but real clients do send them.
    const head =
      `POST /rpc/${queue} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n` +
      'Amqp-Header-Greeting: grüße\r\nContent-Length: 0\r\n\r\n';
    const { text: response } = await rawHttp(fixture.bridge.server.port, Buffer.from(head, 'utf8'));
    expect(response, response).toMatch(/^HTTP\/1\.1 200/);
    expect(response.endsWith('\r\n\r\ngrüße')).toBe(true);
  });
});

// LavinMQ refuses names RabbitMQ accepts (406 PRECONDITION_FAILED on the declare); RabbitMQ
// refuses none that pass the edge's own checks, so there the drill has nothing to stage.
const admin = await brokerAdmin();

describe('an exchange name the broker itself refuses', () => {
  drillIt(
    admin,
    'exchange name refused by the broker',
    admin.product === 'lavinmq' ? undefined : 'RabbitMQ accepts every name the edge lets through',
  )('is answered 400 invalid-request (nothing was published), and closes no reply channel', async () => {
    const closesBefore = await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true });
    for (let attempt = 0; attempt < 2; attempt++) {
      // The second answer comes from the checker's cache; both must be the caller's error, not a 502.
      const res = await request(fixture.bridge.baseUrl).post('/rpc/%C2%80/k').send('x');
      expect(res.status).toBe(400);
      expect(res.headers['content-type']).toContain('application/problem+json');
      expect(res.body.type).toBe(`${PROBLEM_TYPE_PREFIX}invalid-request`);
      expect(res.body.detail).toContain('refuses this exchange name');
    }
    expect(await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true })).toBe(closesBefore);
    expect(fixture.bridge.bridge.session.allChannelsOpen).toBe(true);
  });
});
