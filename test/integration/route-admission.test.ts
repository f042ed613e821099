/**
 * The attacks of the access review, each written before its fix: a caller reaching another route's
 * target (raw routes, encoded paths, parameters that are not names, a route that skips the allowlists),
 * a caller telling the worker who it is, and a caller's flood starving the others. Every request
 * passes one admission decision on the target it resolves to (src/http/access/admission.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ConsumeMessage } from 'amqplib';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { type RunningWorker, startEchoWorker } from '../../examples/echo-worker.js';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { startTestBridge, type TestBridge, waitFor } from '../helpers/bridge.js';
import { AMQP_URL, connectTestBroker, startRawWorker, type TestBroker } from '../helpers/broker.js';
import { closeAll } from '../helpers/fixture.js';

const id = randomBytes(5).toString('hex');
/** Queue names a default parameter can spell (no dots): the attacks below must be possible. */
const queues = {
  orders: `adm${id}-orders`,
  admin: `adm${id}-orders.admin`,
  capture: `adm${id}-capture`,
  victim: `pay${id}.jobs`,
  open: `adm${id}-open`,
};
const tokens = {
  writer: `writer-${randomBytes(12).toString('hex')}`,
  billing: `billing-${randomBytes(12).toString('hex')}`,
  admin: `admin-${randomBytes(12).toString('hex')}`,
  raw: `raw-${randomBytes(12).toString('hex')}`,
};
const sha256 = (token: string) => createHash('sha256').update(token).digest('hex');

const dir = mkdtempSync(join(tmpdir(), 'route-admission-'));
const routesFile = join(dir, 'routes.yaml');
writeFileSync(
  routesFile,
  stringify({
    tokens: [
      { name: 'writer', sha256: sha256(tokens.writer), roles: ['orders.write'] },
      { name: 'billing', sha256: sha256(tokens.billing) },
      { name: 'admin', sha256: sha256(tokens.admin), roles: ['admin'] },
      { name: 'raw-caller', sha256: sha256(tokens.raw), roles: ['raw.caller'] },
    ],
    routes: [
      { name: 'create-order', path: '/orders', queue: queues.orders, requires: { roles: ['orders.write'] } },
      // The parameter route first in the file: file order must not decide who takes /orders/admin.
      { name: 'order-by-id', path: '/orders/:id', queue: `adm${id}-orders.{id}` },
      { name: 'orders-admin', path: '/orders/admin', queue: queues.admin, requires: { roles: ['admin'] } },
      {
        name: 'order-shipped',
        path: '/orders/:orderId/shipped',
        operation: 'publish',
        exchange: 'amq.topic',
        routingKey: `order${id}.{orderId}.shipped`,
        requires: { tokens: ['billing'] },
      },
      { name: 'tenant-echo', method: 'PUT', path: '/tenants/:tenant/echo', queue: '{tenant}' },
      { name: 'tenant-jobs', method: 'PUT', path: '/jobs/:tenant', queue: '{tenant}.jobs' },
      { name: 'capture', path: '/capture', queue: queues.capture },
      { name: 'capture-publish', path: '/capture/publish', operation: 'publish', queue: queues.capture },
    ],
  }),
);

let broker: TestBroker;
const workers: RunningWorker[] = [];
const captured: ConsumeMessage[] = [];
beforeAll(async () => {
  broker = await connectTestBroker();
  for (const queue of [queues.orders, queues.admin, queues.victim, queues.open]) {
    workers.push(await startEchoWorker({ url: AMQP_URL, queue, durable: false }));
  }
  // Where the order-shipped events go: a publish nobody's queue takes would be 404.
  const shipped = `adm${id}-shipped`;
  await broker.channel.assertQueue(shipped, { durable: false, expires: 60_000 });
  await broker.channel.bindQueue(shipped, 'amq.topic', `order${id}.*.shipped`);
  await startRawWorker(broker, queues.capture, (message, reply) => {
    captured.push(message);
    if (message.properties.replyTo) reply(Buffer.from('seen'), {});
  });
});
afterAll(async () => {
  await closeAll([...workers, broker]);
});

/** A bridge for one describe block, with the file's routes and these variables. */
function useBridge(env: Record<string, string>): { readonly current: TestBridge } {
  const state: { bridge?: TestBridge } = {};
  beforeAll(async () => {
    state.bridge = await startTestBridge(env);
  });
  afterAll(async () => {
    await state.bridge?.close();
  });
  return {
    get current() {
      if (state.bridge === undefined) throw new Error('the bridge is used before beforeAll has run');
      return state.bridge;
    },
  };
}

function send(bridge: TestBridge, method: 'post' | 'put', path: string, token?: string) {
  const req = request(bridge.baseUrl)[method](path);
  return token === undefined ? req : req.set('Authorization', `Bearer ${token}`);
}

describe('a routes file with the raw routes left at their default', () => {
  const bridge = useBridge({ ROUTES_FILE: routesFile });

  it("serves no raw route: a token without the role cannot reach create-order's queue by /rpc/", async () => {
    const res = await send(bridge.current, 'post', `/rpc/${queues.orders}`, tokens.billing).send('x');
    expect(res.status).toBe(404);
    expect((await send(bridge.current, 'post', `/publish/${queues.orders}`).send('x')).status).toBe(404);
  });

  it('gives /orders/admin to its literal route however it is spelt, whatever the file order', async () => {
    for (const path of ['/orders/admin', '/orders/%61dmin', '/orders/%61%64%6d%69%6e']) {
      const anonymous = await send(bridge.current, 'post', path).send('x');
      expect(anonymous.status, path).toBe(401);
      expect(anonymous.body.detail, path).toBe('The route orders-admin needs Authorization: Bearer <token>');
      expect((await send(bridge.current, 'post', path, tokens.writer).send('x')).status, path).toBe(403);
    }
    const admin = await send(bridge.current, 'post', '/orders/admin', tokens.admin).send('for admins');
    expect(admin.status).toBe(200);
    expect(admin.text).toBe('for admins');
  });

  it.each([
    ['a dot, which makes a routing key match other bindings', '/orders/7.cancelled.x/shipped'],
    ['an encoded dot', '/orders/7%2Ecancelled/shipped'],
    ['a topic wildcard', '/orders/%23/shipped'],
    ['a star', '/orders/*/shipped'],
    ['an encoded slash', '/orders/a%2Fb/shipped'],
    ['a control character', '/orders/a%00b/shipped'],
    ['a right-to-left override', '/orders/%E2%80%AE7/shipped'],
    ['a non-ASCII letter', '/orders/%C3%A97/shipped'],
  ])('refuses a parameter holding %s (400), publishing nothing', async (_case, path) => {
    const res = await send(bridge.current, 'post', path, tokens.billing).send('x');
    expect(res.status).toBe(400);
    expect(res.body.detail).toBe('The path parameter orderId must match [A-Za-z0-9_-]+ (route order-shipped)');
  });

  it("keeps an open templated route out of a guarded route's queue", async () => {
    const anonymous = await send(bridge.current, 'put', `/tenants/${queues.orders}/echo`).send('x');
    expect(anonymous.status).toBe(401);
    expect(anonymous.body.detail).toBe(
      `The queue ${queues.orders} is guarded by the route create-order, which needs Authorization: Bearer <token>`,
    );
    const billing = await send(bridge.current, 'put', `/tenants/${queues.orders}/echo`, tokens.billing).send('x');
    expect(billing.status).toBe(403);
    expect(billing.body.detail).toBe(
      `The queue ${queues.orders} is guarded by the route create-order, which needs one of the roles orders.write`,
    );
    // A caller who may call create-order may reach its queue this way too; an unguarded queue stays open.
    expect((await send(bridge.current, 'put', `/tenants/${queues.orders}/echo`, tokens.writer).send('x')).status).toBe(
      200,
    );
    expect((await send(bridge.current, 'put', `/tenants/${queues.open}/echo`).send('open')).text).toBe('open');
  });
});

describe('the raw routes switched on beside a routes file, with allowlists', () => {
  const bridge = useBridge({
    ROUTES_FILE: routesFile,
    ROUTES_RAW_ENABLED: 'true',
    ALLOWED_QUEUES: `adm${id}-*`,
    ALLOWED_EXCHANGES: 'amq.topic',
  });

  it('holds a raw target to the requirement of the named route that guards it (finding 1)', async () => {
    const billing = await send(bridge.current, 'post', `/rpc/${queues.orders}`, tokens.billing).send('x');
    expect(billing.status).toBe(403);
    expect(billing.body.detail).toBe(
      `The queue ${queues.orders} is guarded by the route create-order, which needs one of the roles orders.write`,
    );
    expect((await send(bridge.current, 'post', `/rpc/${queues.orders}`).send('x')).status).toBe(401);
    expect((await send(bridge.current, 'post', `/rpc/${queues.orders}`, tokens.writer).send('w')).text).toBe('w');
    // A templated guard: anything order-shipped can produce needs the billing token.
    const topic = `/publish/amq.topic/order${id}.7.shipped`;
    const writer = await send(bridge.current, 'post', topic, tokens.writer).send('x');
    expect(writer.status).toBe(403);
    expect(writer.body.detail).toBe(
      `The target amq.topic:order${id}.7.shipped is guarded by the route order-shipped, which needs one of the tokens billing`,
    );
    expect((await send(bridge.current, 'post', topic, tokens.billing).send('x')).status).toBe(202);
  });

  it('applies the allowlists to the target a named route resolves to', async () => {
    const victim = await send(bridge.current, 'put', `/jobs/pay${id}`).send('x');
    expect(victim.status).toBe(403);
    expect(victim.body.type).toBe(`${PROBLEM_TYPE_PREFIX}forbidden`);
    expect(victim.body.detail).toBe(`This bridge does not allow calls to queue "${queues.victim}"`);
    expect((await send(bridge.current, 'post', `/rpc/${queues.victim}`, tokens.writer).send('x')).status).toBe(403);
    expect((await send(bridge.current, 'put', `/tenants/${queues.open}/echo`).send('open')).status).toBe(200);
  });
});

describe('the raw routes limited to a role (ROUTES_RAW_ROLES)', () => {
  const bridge = useBridge({ ROUTES_FILE: routesFile, ROUTES_RAW_ENABLED: 'true', ROUTES_RAW_ROLES: 'raw.caller' });

  it('lets only callers with the role use them', async () => {
    const writer = await send(bridge.current, 'post', `/rpc/${queues.open}`, tokens.writer).send('x');
    expect(writer.status).toBe(403);
    expect(writer.body.detail).toBe('The raw routes (/rpc/..., /publish/...) needs one of the roles raw.caller');
    expect((await send(bridge.current, 'post', `/rpc/${queues.open}`, tokens.raw).send('r')).text).toBe('r');
    // The role opens the raw routes, not the queues other routes guard.
    expect((await send(bridge.current, 'post', `/rpc/${queues.orders}`, tokens.raw).send('x')).status).toBe(403);
  });
});

describe('what a worker is told about its caller', () => {
  const bridge = useBridge({ ROUTES_FILE: routesFile });

  it('carries x-caller as the bridge verified it, and nothing a caller claims', async () => {
    captured.length = 0;
    expect((await send(bridge.current, 'post', '/capture', tokens.writer).send('a')).status).toBe(200);
    expect((await send(bridge.current, 'post', '/capture').send('b')).status).toBe(200);
    expect(captured.map((message) => message.properties.headers?.['x-caller'])).toEqual(['writer', undefined]);

    for (const [path, header] of [
      ['/capture', 'X-Caller'],
      ['/capture/publish', 'X-Caller'],
      ['/capture', 'X-Deadline'],
      ['/capture/publish', 'X-Deadline'],
    ] as const) {
      const forged = await send(bridge.current, 'post', path).set(`Amqp-Header-${header}`, 'admin').send('forged');
      expect(forged.status, `${path} ${header}`).toBe(400);
      expect(forged.body.detail).toBe(`Amqp-Header-${header.toLowerCase()} is set by the bridge, never by a caller`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(captured.map((message) => message.content.toString())).toEqual(['a', 'b']);
  });
});

/** A POST from a given loopback address (Linux answers on all of 127.0.0.0/8), as another client would. */
function postFrom(
  localAddress: string,
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; retryAfter: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'POST', localAddress, headers, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'] }));
    });
    req.on('error', reject);
    req.end('x');
  });
}

describe("one caller's flood", () => {
  const bridge = useBridge({ MAX_IN_FLIGHT: '20' });

  it('fills only its own share of MAX_IN_FLIGHT (429), and another caller is served meanwhile', async () => {
    const stuck = `adm${id}-stuck`;
    await startRawWorker(broker, stuck, () => undefined);
    const limitedBefore = await bridge.current.metric('rpc_caller_limited_total');
    const flood = Array.from({ length: 30 }, () =>
      postFrom('127.0.0.1', `${bridge.current.baseUrl}/rpc/${stuck}`, { 'Amqp-Timeout': '2500' }),
    );
    await waitFor(() => bridge.current.bridge.rpc.inFlightCount >= 10, 5_000, "the flood's share in flight");
    const others = await Promise.all(
      Array.from({ length: 5 }, () => postFrom('127.0.0.2', `${bridge.current.baseUrl}/rpc/${queues.open}`)),
    );
    const floodStatuses = (await Promise.all(flood)).map((res) => res.status);
    const count = (status: number) => floodStatuses.filter((each) => each === status).length;
    const tally = Object.fromEntries([...new Set(floodStatuses)].map((status) => [status, count(status)]));
    console.log(
      `flood from 127.0.0.1: ${JSON.stringify(tally)}; the other caller (127.0.0.2): ${others.map((res) => res.status).join(' ')}`,
    );
    expect(others.map((res) => res.status)).toEqual([200, 200, 200, 200, 200]);
    expect({ 429: count(429), 504: count(504) }).toEqual({ 429: 20, 504: 10 });
    expect(await bridge.current.metric('rpc_caller_limited_total')).toBe(limitedBefore + 20);
  });
});

describe('a flood of requests to distinct unknown exchanges', () => {
  const bridge = useBridge({});

  it('leaves a first request to an existing exchange its turn: 200, not 503', async () => {
    const exchange = `adm${id}-real`;
    await broker.channel.assertExchange(exchange, 'direct', { durable: false, autoDelete: true });
    await broker.channel.bindQueue(queues.open, exchange, 'k');
    // Connections made beforehand, so that the whole flood reaches the bridge in one burst, as from
    // clients that keep their connections open; the real request is in the middle of it.
    const agent = new Agent({ keepAlive: true, maxSockets: 300 });
    try {
      const url = (path: string) => `${bridge.current.baseUrl}${path}`;
      await Promise.all(Array.from({ length: 300 }, () => call(url('/healthz'), agent, 'GET')));
      const flood = (from: number) =>
        Array.from({ length: 150 }, (_, n) => call(url(`/rpc/adm${id}-missing-${from + n}/k`), agent));
      const first = flood(0);
      const real = call(url(`/rpc/${exchange}/k`), agent, 'POST', 'real');
      const statuses = (await Promise.all([...first, ...flood(150)])).map((res) => res.status);
      const answer = await real;
      const count = (status: number) => statuses.filter((each) => each === status).length;
      console.log(`exchange flood: ${count(404)} x 404, ${count(503)} x 503; the real exchange: ${answer.status}`);
      expect(answer).toEqual({ status: 200, body: 'real' });
      expect({ 404: count(404) }).toEqual({ 404: 300 });
    } finally {
      agent.destroy();
    }
  });
});

/** A request over a given agent (its kept-alive connections). */
function call(url: string, agent: Agent, method = 'POST', body = 'x'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end(method === 'GET' ? undefined : body);
  });
}

describe('a reply that comes back on another channel than its request went out on', () => {
  const bridge = useBridge({ AMQP_CHANNELS: '2' });

  it('is stray, whatever its correlation id', async () => {
    const swap = `adm${id}-swap`;
    const held: ConsumeMessage[] = [];
    // Answers each of two requests at the other one's reply address, with its own correlation id.
    await startRawWorker(broker, swap, (message) => {
      held.push(message);
      if (held.length < 2) return;
      const [first, second] = held as [ConsumeMessage, ConsumeMessage];
      for (const [request, other] of [
        [first, second],
        [second, first],
      ] as const) {
        broker.channel.sendToQueue(String(other.properties.replyTo), Buffer.from('crossed'), {
          correlationId: request.properties.correlationId,
        });
      }
    });
    const strayBefore = await bridge.current.metric('rpc_late_replies_total');
    const statuses = await Promise.all(
      [1, 2].map(() =>
        request(bridge.current.baseUrl)
          .post(`/rpc/${swap}`)
          .set('Amqp-Timeout', '1500')
          .send('x')
          .then((res) => res.status),
      ),
    );
    expect(held.map((message) => message.properties.replyTo)).toHaveLength(2);
    expect(held[0]?.properties.replyTo).not.toBe(held[1]?.properties.replyTo);
    expect(statuses).toEqual([504, 504]);
    expect(await bridge.current.metric('rpc_late_replies_total')).toBe(strayBefore + 2);
  });
});
