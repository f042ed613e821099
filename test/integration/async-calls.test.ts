import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ConsumeMessage } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { startTestBridge, type TestBridge } from '../helpers/bridge.js';
import { connectTestBroker, startRawWorker, type TestBroker, uniqueName } from '../helpers/broker.js';
import { closeAll } from '../helpers/fixture.js';

/**
 * Calls that outlive their HTTP request (Prefer: respond-async, GET/DELETE /calls/{id}) and requests
 * sent once per Idempotency-Key, across two bridges on one broker: the broker is the only store.
 */

const queue = uniqueName('async');
const publishQueue = uniqueName('async-publish');
const tokens = {
  alice: `alice-${randomBytes(12).toString('hex')}`,
  bob: `bob-${randomBytes(12).toString('hex')}`,
  mallory: `mallory-${randomBytes(12).toString('hex')}`,
};
const sha256 = (token: string) => createHash('sha256').update(token).digest('hex');
const dir = mkdtempSync(join(tmpdir(), 'async-calls-'));
const routesFile = join(dir, 'routes.yaml');
writeFileSync(
  routesFile,
  stringify({
    tokens: [
      { name: 'alice', sha256: sha256(tokens.alice) },
      { name: 'bob', sha256: sha256(tokens.bob) },
      { name: 'mallory', sha256: sha256(tokens.mallory) },
    ],
    routes: [{ name: 'work', path: '/work', queue }],
  }),
);
const env = {
  ROUTES_FILE: routesFile,
  ROUTES_RAW_ENABLED: 'true',
  RPC_MAX_TIMEOUT_MS: '5000',
  ASYNC_MAX_TIMEOUT_MS: '60000',
  ASYNC_RESULT_TTL_MS: '1500',
  IDEMPOTENCY_TTL_MS: '60000',
  CALLS_MAX_HELD_PER_CALLER: '40',
};

let broker: TestBroker;
let first: TestBridge;
let second: TestBridge;
/** Every request the worker got, by body: how many times the work was done. */
const deliveries = new Map<string, ConsumeMessage[]>();
const published: ConsumeMessage[] = [];

beforeAll(async () => {
  broker = await connectTestBroker();
  // Answers after `delay-ms` (header), with its body and a status of its choosing; never answers `silent`.
  await startRawWorker(broker, queue, (message, reply) => {
    const body = message.content.toString();
    deliveries.set(body, [...(deliveries.get(body) ?? []), message]);
    if (body === 'silent') return;
    if (body.startsWith('parts-')) {
      // A streaming worker: two parts, then the final reply.
      for (const piece of ['one', 'two']) reply(Buffer.from(piece), { headers: { 'x-stream': 'more' } });
      setTimeout(() => reply(Buffer.from(`final:${body}`), { contentType: 'text/plain' }), 100);
      return;
    }
    const delay = Number(message.properties.headers?.['delay-ms'] ?? 0);
    setTimeout(
      () =>
        reply(Buffer.from(`done:${body}`), {
          contentType: 'text/plain',
          headers: { 'http-status': 201, worker: 'raw' },
        }),
      delay,
    );
  });
  await broker.channel.assertQueue(publishQueue, { durable: false, autoDelete: true });
  await broker.channel.consume(publishQueue, (message) => message && published.push(message), { noAck: true });
  [first, second] = await Promise.all([startTestBridge(env), startTestBridge(env)]);
});

afterAll(async () => {
  await closeAll([first, second, broker]);
});

const as = (who: keyof typeof tokens) => ({ Authorization: `Bearer ${tokens[who]}` });
const unique = (what: string) => `${what}-${randomBytes(6).toString('hex')}`;

function post(bridge: TestBridge, path: string, body: string, headers: Record<string, string>): Promise<Response> {
  return fetch(`${bridge.baseUrl}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'text/plain', ...headers },
    body,
  });
}

function get(bridge: TestBridge, location: string, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${bridge.baseUrl}${location}`, { headers });
}

describe('Prefer: respond-async', () => {
  it('answers 202 with a Location any replica answers for: pending, then the reply mapped as a synchronous call maps it, as often as asked', async () => {
    const body = unique('slow');
    const started = await post(first, '/work', body, {
      ...as('alice'),
      Prefer: 'respond-async',
      'Amqp-Header-Delay-Ms': '400',
    });
    expect(started.status).toBe(202);
    expect(started.headers.get('preference-applied')).toBe('respond-async');
    const location = started.headers.get('location') ?? '';
    expect(location).toMatch(/^\/calls\/[A-Za-z0-9_-]{38}$/);
    const document = await started.json();
    expect(document).toMatchObject({ status: 'pending', location });

    const pending = await get(second, location, as('alice'));
    expect(pending.status).toBe(202);
    expect(pending.headers.get('retry-after')).toBe('1');

    // Long-poll on the other replica: held until the reply comes.
    const waitedFrom = Date.now();
    const answered = await get(second, location, { ...as('alice'), Prefer: 'wait=5' });
    expect(answered.status).toBe(201);
    expect(Date.now() - waitedFrom).toBeLessThan(3_000);
    expect(answered.headers.get('content-type')).toBe('text/plain');
    expect(answered.headers.get('amqp-header-worker')).toBe('raw');
    expect(await answered.text()).toBe(`done:${body}`);

    const again = await get(first, location, as('alice'));
    expect(again.status).toBe(201);
    expect(await again.text()).toBe(`done:${body}`);
    // HEAD answers as GET does, without the body (curl -I, a monitor's probe); the reply stays to be read.
    const head = await fetch(`${first.baseUrl}${location}`, { method: 'HEAD', headers: as('alice') });
    expect([head.status, head.headers.get('content-type'), await head.text()]).toEqual([201, 'text/plain', '']);
    expect(await (await get(second, location, as('alice'))).text()).toBe(`done:${body}`);
    expect(deliveries.get(body)).toHaveLength(1);
    expect(await first.metric('rpc_async_calls_total', { result: 'deferred' })).toBeGreaterThanOrEqual(1);
  });

  it("answers with a streaming worker's final reply, as a plain call does, inline and by GET", async () => {
    const inline = await post(first, '/work', unique('parts'), { ...as('alice'), Prefer: 'respond-async, wait=3' });
    expect(inline.status).toBe(200);
    expect(await inline.text()).toMatch(/^final:parts-/);
    const body = unique('parts');
    const started = await post(first, '/work', body, { ...as('alice'), Prefer: 'respond-async' });
    expect(started.status).toBe(202);
    const read = await get(second, started.headers.get('location') ?? '', { ...as('alice'), Prefer: 'wait=3' });
    expect(await read.text()).toBe(`final:${body}`);
  });

  it('answers as usual when the reply comes within Prefer: wait, and keeps nothing', async () => {
    const body = unique('quick');
    const response = await post(first, `/rpc/${queue}`, body, { ...as('alice'), Prefer: 'respond-async, wait=3' });
    expect(response.status).toBe(201);
    expect(response.headers.get('location')).toBeNull();
    expect(await response.text()).toBe(`done:${body}`);
  });

  it('loses no call when the bridge that took it is gone: a new replica reads the reply the broker kept', async () => {
    const replica = await startTestBridge(env);
    const body = unique('restart');
    const started = await post(replica, '/work', body, {
      ...as('alice'),
      Prefer: 'respond-async',
      'Amqp-Header-Delay-Ms': '200',
    });
    expect(started.status).toBe(202);
    const location = started.headers.get('location') ?? '';
    await replica.close();
    // The reply arrives while no bridge that knew of the call runs.
    await new Promise((resolve) => setTimeout(resolve, 400));
    const restarted = await startTestBridge(env);
    try {
      const answered = await get(restarted, location, as('alice'));
      expect(answered.status).toBe(201);
      expect(await answered.text()).toBe(`done:${body}`);
    } finally {
      await restarted.close();
    }
  });

  it('answers 504 once the deadline has passed with no reply, and 404 once the call has expired', async () => {
    const started = await post(first, '/work', 'silent', {
      ...as('alice'),
      Prefer: 'respond-async',
      'Amqp-Timeout': '300',
    });
    expect(started.status).toBe(202);
    const location = started.headers.get('location') ?? '';
    const waited = await get(second, location, { ...as('alice'), Prefer: 'wait=10' });
    expect(waited.status).toBe(504);
    expect(waited.headers.get('content-type')).toBe('application/problem+json');
    // ASYNC_RESULT_TTL_MS=1500 after the 300 ms deadline.
    await new Promise((resolve) => setTimeout(resolve, 1_600));
    const expired = await get(first, location, as('alice'));
    expect(expired.status).toBe(404);
    expect(((await expired.json()) as { type: string; detail: string }).type).toMatch(/call-not-found$/);
  });

  it("answers 404 for another caller's call, an altered id and anything that is no call id", async () => {
    const started = await post(first, '/work', unique('mine'), {
      ...as('alice'),
      Prefer: 'respond-async',
      'Amqp-Header-Delay-Ms': '100',
    });
    const location = started.headers.get('location') ?? '';
    const id = location.slice('/calls/'.length);
    // The same id, asked by bob, by an anonymous caller, with its times changed, and nonsense.
    const altered = `${id.slice(0, 30)}${id[30] === 'A' ? 'B' : 'A'}${id.slice(31)}`;
    const answers = await Promise.all([
      get(second, location, { ...as('bob'), Prefer: 'wait=2' }),
      get(second, location),
      get(second, `/calls/${altered}`, as('alice')),
      get(second, '/calls/..%2F..%2Frpc', as('alice')),
      get(second, `/calls/${'A'.repeat(38)}`, as('alice')),
      fetch(`${first.baseUrl}${location}`, { method: 'DELETE', headers: as('bob') }),
      // HEAD tells nobody but its owner that a call exists.
      fetch(`${second.baseUrl}${location}`, { method: 'HEAD', headers: as('bob') }),
      fetch(`${second.baseUrl}${location}`, { method: 'HEAD' }),
    ]);
    expect(answers.map((answer) => answer.status)).toEqual([404, 404, 404, 404, 404, 404, 404, 404]);
    // Still alice's, untouched by bob's DELETE.
    const mine = await get(first, location, { ...as('alice'), Prefer: 'wait=3' });
    expect(mine.status).toBe(201);
  });

  it('DELETE gives the call up: its reply is dropped, and the id answers 404', async () => {
    const started = await post(first, '/work', unique('give-up'), {
      ...as('alice'),
      Prefer: 'respond-async',
      'Amqp-Header-Delay-Ms': '300',
    });
    const location = started.headers.get('location') ?? '';
    const deleted = await fetch(`${second.baseUrl}${location}`, { method: 'DELETE', headers: as('alice') });
    expect(deleted.status).toBe(204);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect((await get(first, location, as('alice'))).status).toBe(404);
    expect((await fetch(`${second.baseUrl}${location}`, { method: 'DELETE', headers: as('alice') })).status).toBe(404);
    expect((await fetch(`${second.baseUrl}${location}`, { method: 'PUT', headers: as('alice') })).status).toBe(405);
  });

  it('takes a longer timeout than a synchronous call may ask for, up to ASYNC_MAX_TIMEOUT_MS', async () => {
    const sync = await post(first, `/rpc/${queue}`, unique('sync'), { ...as('alice'), 'Amqp-Timeout': '30000' });
    expect(sync.status).toBe(400);
    expect(((await sync.json()) as { type: string; detail: string }).detail).toContain('RPC_MAX_TIMEOUT_MS');
    const deferred = await post(first, `/rpc/${queue}`, unique('long'), {
      ...as('alice'),
      Prefer: 'respond-async',
      'Amqp-Timeout': '30000',
    });
    expect(deferred.status).toBe(202);
    const beyond = await post(first, `/rpc/${queue}`, unique('beyond'), {
      ...as('alice'),
      Prefer: 'respond-async',
      'Amqp-Timeout': '60001',
    });
    expect(beyond.status).toBe(400);
    expect(((await beyond.json()) as { type: string; detail: string }).detail).toContain('ASYNC_MAX_TIMEOUT_MS');
  });

  it("bounds what one caller's flood makes the broker keep: past CALLS_MAX_HELD_PER_CALLER, 429, and others are still served", async () => {
    const flood = await Promise.all(
      Array.from({ length: 45 }, (_, i) =>
        post(first, '/work', `flood-${i}`, { ...as('mallory'), Prefer: 'respond-async' }),
      ),
    );
    const statuses = flood.map((answer) => answer.status);
    expect(statuses.filter((status) => status === 202)).toHaveLength(40);
    expect(statuses.filter((status) => status === 429)).toHaveLength(5);
    const refused = flood.find((answer) => answer.status === 429) as Response;
    expect(refused.headers.get('retry-after')).toBe('1');
    expect(((await refused.json()) as { detail: string }).detail).toContain('CALLS_MAX_HELD_PER_CALLER');
    const others = await post(first, '/work', unique('other'), { ...as('bob'), Prefer: 'respond-async' });
    expect(others.status).toBe(202);
  });

  it("keeps a named route's timeout ceiling for asynchronous calls", async () => {
    const named = await post(first, '/work', unique('named'), {
      ...as('alice'),
      Prefer: 'respond-async',
      'Amqp-Timeout': '30000',
    });
    expect(named.status).toBe(400);
  });

  it('answers an unroutable asynchronous call at once, as a synchronous one, and keeps nothing', async () => {
    const held = await first.metric('rpc_calls_held');
    const response = await post(first, `/rpc/${uniqueName('nobody')}`, 'x', {
      ...as('alice'),
      Prefer: 'respond-async',
    });
    expect(response.status).toBe(404);
    expect(((await response.json()) as { type: string; detail: string }).type).toMatch(/unroutable$/);
    expect(await first.metric('rpc_calls_held')).toBe(held);
  });
});

describe('Idempotency-Key', () => {
  it('sends the message once: a retry after the answer replays it, on another replica too', async () => {
    const key = unique('key');
    const body = unique('once');
    const one = await post(first, '/work', body, { ...as('alice'), 'Idempotency-Key': key });
    const two = await post(second, '/work', body, { ...as('alice'), 'Idempotency-Key': key });
    expect([one.status, two.status]).toEqual([201, 201]);
    expect(one.headers.get('idempotent-replayed')).toBeNull();
    expect(two.headers.get('idempotent-replayed')).toBe('true');
    expect([await one.text(), await two.text()]).toEqual([`done:${body}`, `done:${body}`]);
    expect(deliveries.get(body)).toHaveLength(1);
    expect(deliveries.get(body)?.[0]?.properties.messageId).toBe(key);
  });

  it('joins the first request while it is still in flight, on the other replica', async () => {
    const key = unique('key');
    const body = unique('joined');
    const headers = { ...as('alice'), 'Idempotency-Key': `"${key}"`, 'Amqp-Header-Delay-Ms': '500' };
    const firstTry = post(first, '/work', body, headers);
    await new Promise((resolve) => setTimeout(resolve, 150));
    const retry = await post(second, '/work', body, headers);
    const original = await firstTry;
    expect([original.status, retry.status]).toEqual([201, 201]);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(await retry.text()).toBe(`done:${body}`);
    expect(deliveries.get(body)).toHaveLength(1);
  });

  it('sends once when many retries race the first across both replicas: every one gets its answer', async () => {
    const key = unique('key');
    const body = unique('race');
    const headers = { ...as('alice'), 'Idempotency-Key': key, 'Amqp-Header-Delay-Ms': '300' };
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, i) => post(i % 2 === 0 ? first : second, '/work', body, headers)),
    );
    expect(answers.map((answer) => answer.status)).toEqual(Array(20).fill(201));
    expect(answers.filter((answer) => answer.headers.get('idempotent-replayed') === 'true')).toHaveLength(19);
    expect(new Set(await Promise.all(answers.map((answer) => answer.text())))).toEqual(new Set([`done:${body}`]));
    expect(deliveries.get(body)).toHaveLength(1);
  });

  it('refuses the same key for a request that differs in anything but its trace context (422)', async () => {
    const key = unique('key');
    const body = unique('fingerprint');
    const sent = { ...as('alice'), 'Idempotency-Key': key, 'Amqp-Header-Amount': '10' };
    expect((await post(first, '/work', body, sent)).status).toBe(201);
    const changed = await Promise.all([
      post(second, '/work', body, { ...sent, 'Amqp-Header-Amount': '999999' }),
      post(second, '/work', body, { ...sent, 'Content-Type': 'application/json' }),
      post(second, '/work', body, { ...sent, 'Amqp-Type': 'refund' }),
      post(second, `/publish/${queue}`, body, sent),
    ]);
    expect(changed.map((answer) => answer.status)).toEqual([422, 422, 422, 422]);
    const traced = await post(second, '/work', body, {
      ...sent,
      traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    });
    expect(traced.status).toBe(201);
    expect(traced.headers.get('idempotent-replayed')).toBe('true');
    expect(deliveries.get(body)).toHaveLength(1);
  });

  it('refuses the same key with another body (422), and keeps keys apart between callers', async () => {
    const key = unique('key');
    const body = unique('bodies');
    expect((await post(first, '/work', body, { ...as('alice'), 'Idempotency-Key': key })).status).toBe(201);
    const reused = await post(second, '/work', `${body}-changed`, { ...as('alice'), 'Idempotency-Key': key });
    expect(reused.status).toBe(422);
    expect(((await reused.json()) as { type: string; detail: string }).type).toMatch(/idempotency-key-reused$/);
    const bobs = await post(second, '/work', body, { ...as('bob'), 'Idempotency-Key': key });
    expect(bobs.status).toBe(201);
    expect(bobs.headers.get('idempotent-replayed')).toBeNull();
    expect(deliveries.get(body)).toHaveLength(2);
  });

  it('publishes once per key, and replays the 202', async () => {
    const key = unique('key');
    const one = await post(first, `/publish/${publishQueue}`, 'event', { ...as('alice'), 'Idempotency-Key': key });
    const two = await post(second, `/publish/${publishQueue}`, 'event', { ...as('alice'), 'Idempotency-Key': key });
    expect([one.status, two.status]).toEqual([202, 202]);
    expect(two.headers.get('idempotent-replayed')).toBe('true');
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(published.filter((message) => message.properties.messageId === key)).toHaveLength(1);
  });

  it('combines with respond-async: the retry gets the same call', async () => {
    const key = unique('key');
    const headers = { ...as('alice'), Prefer: 'respond-async', 'Idempotency-Key': key, 'Amqp-Header-Delay-Ms': '300' };
    const body = unique('both');
    const one = await post(first, '/work', body, headers);
    const two = await post(second, '/work', body, headers);
    expect([one.status, two.status]).toEqual([202, 202]);
    expect(two.headers.get('location')).toBe(one.headers.get('location'));
    expect(deliveries.get(body)).toHaveLength(1);
  });

  it('refuses a malformed key (400) and a target under the bridge’s own queues', async () => {
    const malformed = await post(first, '/work', 'x', { ...as('alice'), 'Idempotency-Key': 'two, keys' });
    expect(malformed.status).toBe(400);
    const reserved = await post(first, `/rpc/rpc-bridge.call.${'x'.repeat(43)}`, 'forged reply', as('alice'));
    expect(reserved.status).toBe(400);
    expect(((await reserved.json()) as { type: string; detail: string }).detail).toContain('rpc-bridge.');
  });
});
