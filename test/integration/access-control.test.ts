import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import request from 'supertest';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { startEchoWorker } from '../../examples/echo-worker.js';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { startTestBridge, waitFor } from '../helpers/bridge.js';
import { AMQP_URL, uniqueName } from '../helpers/broker.js';
import { useEchoBridge } from '../helpers/fixture.js';

const TOKEN = 'token-for-tests-0123456789';
const SECOND = 'second-token-from-a-file-9876';
const secrets = mkdtempSync(join(tmpdir(), 'bridge-tokens-'));
writeFileSync(join(secrets, 'tokens'), `# mounted secret\n${SECOND}\n`);
// Registered before the fixture, so it runs after the bridge is closed.
afterAll(() => rmSync(secrets, { recursive: true, force: true }));

const fixture = useEchoBridge(
  {
    AUTH_TOKENS: TOKEN,
    AUTH_TOKENS_FILE: join(secrets, 'tokens'),
    AUTH_PROTECT_METRICS: 'true',
    ALLOWED_QUEUES: 'test.allowed.*,orders',
    ALLOWED_EXCHANGES: 'amq.topic',
  },
  { echoQueue: uniqueName('allowed') },
);
/** The echo worker's queue, on the allowlist. */
const allowed = fixture.echoQueue;

describe('bearer tokens', () => {
  it('answers 401 with WWW-Authenticate when the token is missing or wrong', async () => {
    const missing = await request(fixture.bridge.baseUrl).post(`/rpc/${allowed}`).send('x');
    expect(missing.status).toBe(401);
    expect(missing.headers['www-authenticate']).toBe('Bearer realm="amqp-rpc-bridge"');
    expect(missing.body.type).toBe(`${PROBLEM_TYPE_PREFIX}unauthorized`);

    const wrong = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${allowed}`)
      .set('Authorization', 'Bearer nope')
      .send('x');
    expect(wrong.status).toBe(401);
    expect(wrong.headers['www-authenticate']).toBe('Bearer realm="amqp-rpc-bridge", error="invalid_token"');

    const basic = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${allowed}`)
      .set('Authorization', `Basic ${TOKEN}`)
      .send('x');
    expect(basic.status).toBe(401);
  });

  it('serves a request with a token from AUTH_TOKENS or from AUTH_TOKENS_FILE, and never logs it', async () => {
    const ids = [uniqueName('token-1'), uniqueName('token-2')];
    for (const [i, token] of [TOKEN, SECOND].entries()) {
      const res = await request(fixture.bridge.baseUrl)
        .post(`/rpc/${allowed}`)
        .set('Authorization', `Bearer ${token}`)
        .set('X-Request-Id', String(ids[i]))
        .set('Content-Type', 'text/plain')
        .send('ok');
      expect(res.status).toBe(200);
      expect(res.text).toBe('ok');
    }
    // Each request's own line is there (with its headers), so what follows looks at something.
    const logged = (id: string) =>
      fixture.bridge.logs.some((line) => (line.req as { id?: string } | undefined)?.id === id);
    await waitFor(() => ids.every(logged), 2_000, "the requests' log lines");
    const logs = fixture.bridge.logs.map((line) => JSON.stringify(line)).join('\n');
    expect(logs).not.toContain(TOKEN);
    expect(logs).not.toContain(SECOND);
  });

  it('protects /metrics when AUTH_PROTECT_METRICS is set, but never the health probes', async () => {
    const { baseUrl } = fixture.bridge;
    expect((await request(baseUrl).get('/metrics')).status).toBe(401);
    expect((await request(baseUrl).get('/metrics').set('Authorization', `Bearer ${TOKEN}`)).status).toBe(200);
    expect((await request(baseUrl).get('/healthz')).status).toBe(200);
    expect((await request(baseUrl).get('/readyz')).status).toBe(200);
  });
});

describe('allowlists', () => {
  it('answers 403 for a queue or exchange off the list, before anything reaches the broker', async () => {
    const auth = { Authorization: `Bearer ${TOKEN}` };
    const queue = await request(fixture.bridge.baseUrl).post('/rpc/payments').set(auth).send('x');
    expect(queue.status).toBe(403);
    expect(queue.body).toMatchObject({ type: `${PROBLEM_TYPE_PREFIX}forbidden`, target: 'payments' });
    const exchange = await request(fixture.bridge.baseUrl).post('/rpc/amq.direct/orders').set(auth).send('x');
    expect(exchange.status).toBe(403);
    // On the list: reaches the broker (no queue bound for this key, so the broker returns it).
    const topic = await request(fixture.bridge.baseUrl).post('/rpc/amq.topic/nobody.listens').set(auth).send('x');
    expect(topic.status).toBe(404);
    expect(topic.body.type).toBe(`${PROBLEM_TYPE_PREFIX}unroutable`);
  });
});

describe('one allowlist without the other', () => {
  it('ALLOWED_QUEUES alone closes the exchange route, which could reach any queue', async () => {
    const forbidden = uniqueName('forbidden');
    const exchange = uniqueName('own-exchange');
    const { broker } = fixture;
    const forbiddenWorker = await startEchoWorker({ url: AMQP_URL, queue: forbidden, durable: false });
    onTestFinished(() => forbiddenWorker.close());
    await broker.channel.assertExchange(exchange, 'direct', { durable: false });
    onTestFinished(async () => {
      await broker.channel.deleteExchange(exchange).catch(() => undefined);
    });
    await broker.channel.bindQueue(forbidden, exchange, 'k');
    const queuesOnly = await startTestBridge({ ALLOWED_QUEUES: 'test.allowed.*' });
    try {
      // Both reach the forbidden queue's worker (and answered 200) when the exchange route is left open.
      for (const path of [`/rpc/amq.direct/${forbidden}`, `/rpc/${exchange}/k`]) {
        const res = await request(queuesOnly.baseUrl).post(path).send('x');
        expect(res.status, path).toBe(403);
        expect(res.body.type).toBe(`${PROBLEM_TYPE_PREFIX}forbidden`);
        expect(res.body.detail).toContain('ALLOWED_EXCHANGES is unset');
      }
      expect((await request(queuesOnly.baseUrl).post(`/rpc/${forbidden}`).send('x')).status).toBe(403);
      const own = await request(queuesOnly.baseUrl)
        .post(`/rpc/${allowed}`)
        .set('Content-Type', 'text/plain')
        .send('ok');
      expect(own.status).toBe(200);
    } finally {
      await queuesOnly.close();
    }
  });

  it('ALLOWED_EXCHANGES alone closes the queue route (the default exchange reaches every queue)', async () => {
    const exchangesOnly = await startTestBridge({ ALLOWED_EXCHANGES: 'amq.topic' });
    try {
      const res = await request(exchangesOnly.baseUrl).post(`/rpc/${allowed}`).send('x');
      expect(res.status).toBe(403);
      expect(res.body.detail).toContain('ALLOWED_QUEUES is unset');
      const topic = await request(exchangesOnly.baseUrl).post('/rpc/amq.topic/nobody.listens').send('x');
      expect(topic.status).toBe(404);
    } finally {
      await exchangesOnly.close();
    }
  });
});
