/**
 * Named routes from a routes file (ROUTES_FILE): fixed targets (templated from the path), their own
 * timeout, body limit, headers and callers, the raw routes switched off, the served contract, and a
 * reload (in process and by SIGHUP) that drops no request.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ConsumeMessage } from 'amqplib';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { waitFor } from '../helpers/bridge.js';
import { runBridgeProcessUntilExit, startBridgeProcess } from '../helpers/bridge-process.js';
import { uniqueName } from '../helpers/broker.js';
import { useEchoBridge } from '../helpers/fixture.js';

const WRITER = 'writer-token-0123456789abcdef';
const READER = 'reader-token-0123456789abcdef';
const BILLING = 'billing-token-0123456789abcdef';
const sha256 = (token: string) => createHash('sha256').update(token).digest('hex');
const bearer = (token: string) => `Bearer ${token}`;
/** POST to the fixture's bridge, with a bearer token when given. */
function post(path: string, token?: string) {
  const req = request(fixture.bridge.baseUrl).post(path);
  return token === undefined ? req : req.set('Authorization', bearer(token));
}

const dir = mkdtempSync(join(tmpdir(), 'named-routes-'));
const routesFile = join(dir, 'routes.yaml');
const tenant = uniqueName('tenant');
const auditQueue = uniqueName('audit');
const eventsQueue = uniqueName('events');

/** The routes file the bridge starts with; tests that reload write their own variants. */
function routesDocument(extra: object[] = []) {
  return {
    tokens: [
      { name: 'writer', sha256: sha256(WRITER), roles: ['orders.write'] },
      { name: 'reader', sha256: sha256(READER), roles: ['orders.read'] },
      { name: 'billing', sha256: sha256(BILLING) },
    ],
    routes: [
      {
        name: 'create-order',
        path: '/orders',
        queue: tenant,
        timeoutMs: 2000,
        maxBodyBytes: 64,
        requires: { roles: ['orders.write'] },
      },
      {
        name: 'order-events',
        path: '/orders/:orderId/events',
        operation: 'publish',
        exchange: 'amq.topic',
        routingKey: 'order.{orderId}.event',
        requires: { tokens: ['billing'] },
      },
      // Its own pattern lets dots through (the test's queue names have them): the guard of
      // create-order, not the pattern, keeps it out of that route's queue.
      {
        name: 'tenant-echo',
        method: 'PUT',
        path: '/tenants/:tenant/echo',
        queue: '{tenant}',
        params: { tenant: '[a-z0-9.-]+' },
      },
      {
        name: 'audit',
        path: '/audit',
        operation: 'publish',
        queue: auditQueue,
        headers: { source: 'edge', version: 2 },
      },
      ...extra,
    ],
  };
}
writeFileSync(routesFile, stringify(routesDocument()));

const fixture = useEchoBridge({ ROUTES_FILE: routesFile, ROUTES_RAW_ENABLED: 'false' }, { echoQueue: tenant });
const received: { audit: ConsumeMessage[]; events: ConsumeMessage[] } = { audit: [], events: [] };

beforeAll(async () => {
  const { channel } = fixture.broker;
  await channel.assertQueue(auditQueue, { durable: false, autoDelete: true });
  await channel.consume(auditQueue, (message) => message && received.audit.push(message), { noAck: true });
  await channel.assertQueue(eventsQueue, { durable: false, autoDelete: true });
  await channel.bindQueue(eventsQueue, 'amq.topic', 'order.*.event');
  await channel.consume(eventsQueue, (message) => message && received.events.push(message), { noAck: true });
});

afterAll(() => {
  // Back to the starting routes for any later test of this file's process.
  writeFileSync(routesFile, stringify(routesDocument()));
});

describe('a named RPC route', () => {
  it('calls its fixed queue for a caller with the role, and refuses others (401, 403)', async () => {
    const ok = await post('/orders', WRITER).set('Content-Type', 'application/json').send('{"sku":"A-1"}');
    expect(ok.status).toBe(200);
    expect(ok.text).toBe('{"sku":"A-1"}');
    const anonymous = await post('/orders').send('x');
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers['www-authenticate']).toContain('Bearer');
    const wrongRole = await post('/orders', READER).send('x');
    expect(wrongRole.status).toBe(403);
    expect(wrongRole.body.detail).toBe('The route create-order needs one of the roles orders.write');
    const unknown = await post('/orders', 'not-a-known-token-at-all').send('x');
    expect(unknown.status).toBe(401);
  });

  it("keeps to the route's timeout and body limit", async () => {
    const longer = await post('/orders', WRITER).set('Amqp-Timeout', '5000').send('x');
    expect(longer.status).toBe(400);
    expect(longer.body.detail).toBe('Amqp-Timeout must not exceed 2000 ms (route create-order)');
    const large = await post('/orders', WRITER).send('x'.repeat(65));
    expect(large.status).toBe(413);
    const shorter = await post('/orders', WRITER).set('Amqp-Timeout', '1500').send('y'.repeat(64));
    expect(shorter.status).toBe(200);
  });

  it('fills a templated queue from the path, percent-decoded, under its own method', async () => {
    const path = `/tenants/${tenant.replace(/\./g, '%2E')}/echo`;
    // The queue is create-order's: reaching it through this open route needs what create-order needs.
    const anonymous = await request(fixture.bridge.baseUrl).put(path).send('hi');
    expect(anonymous.status).toBe(401);
    expect(anonymous.body.detail).toBe(
      `The queue ${tenant} is guarded by the route create-order, which needs Authorization: Bearer <token>`,
    );
    expect(
      (await request(fixture.bridge.baseUrl).put(path).set('Authorization', bearer(READER)).send('hi')).status,
    ).toBe(403);
    const res = await request(fixture.bridge.baseUrl).put(path).set('Authorization', bearer(WRITER)).send('hi');
    expect(res.status).toBe(200);
    expect(res.text).toBe('hi');
    const wrongMethod = await request(fixture.bridge.baseUrl).post(`/tenants/${tenant}/echo`).send('hi');
    expect(wrongMethod.status).toBe(405);
    expect(wrongMethod.headers.allow).toBe('PUT');
    const reserved = await request(fixture.bridge.baseUrl).put('/tenants/amq.gen-x/echo').send('hi');
    expect(reserved.status).toBe(400);
  });
});

describe('a named publish route', () => {
  it('publishes to its exchange with the routing key filled from the path (202), for its token only', async () => {
    const res = await post('/orders/42/events', BILLING).send('shipped');
    expect(res.status).toBe(202);
    await waitFor(() => received.events.length === 1, 5_000, 'the event to arrive');
    expect(received.events[0]?.fields.routingKey).toBe('order.42.event');
    expect(received.events[0]?.content.toString()).toBe('shipped');
    const writer = await post('/orders/43/events', WRITER).send('x');
    expect(writer.status).toBe(403);
    expect(writer.body.detail).toBe('The route order-events needs one of the tokens billing');
  });

  it("adds the route's headers, which win over the caller's", async () => {
    const res = await request(fixture.bridge.baseUrl)
      .post('/audit')
      .set('Amqp-Header-Source', 'spoofed')
      .set('Amqp-Header-Note', 'kept')
      .send('login');
    expect(res.status).toBe(202);
    await waitFor(() => received.audit.length === 1, 5_000, 'the audit message to arrive');
    const headers = received.audit[0]?.properties.headers ?? {};
    expect(headers.source).toBe('edge');
    expect(headers.version).toBe('2');
    expect(headers.note).toBe('kept');
  });
});

describe('the raw routes switched off (ROUTES_RAW_ENABLED=false)', () => {
  it('answers 404 for /rpc/... and /publish/..., and the contract lists only the named routes', async () => {
    for (const path of [`/rpc/${tenant}`, `/publish/${tenant}`, `/rpc/amq.topic/k`]) {
      const res = await request(fixture.bridge.baseUrl).post(path).send('x');
      expect(res.status, path).toBe(404);
      expect(res.body.type).toBe(`${PROBLEM_TYPE_PREFIX}not-found`);
    }
    const contract = parse((await request(fixture.bridge.baseUrl).get('/openapi.yaml')).text) as {
      paths: Record<string, Record<string, { operationId: string; security?: unknown }>>;
    };
    expect(Object.keys(contract.paths)).not.toContain('/rpc/{queue}');
    expect(contract.paths['/orders/{orderId}/events']?.post?.operationId).toBe('order-events');
    expect(contract.paths['/orders/{orderId}/events']?.post?.security).toEqual([{ bearer: [] }]);
    expect(contract.paths['/tenants/{tenant}/echo']?.put?.operationId).toBe('tenant-echo');
  });
});

describe('reloading the routes file', () => {
  it('swaps the routes while requests keep coming, every one answered 2xx, and keeps them when the file is broken', async () => {
    const { bridge } = fixture.bridge;
    const statuses: Record<string, number> = {};
    let stop = false;
    const caller = async () => {
      while (!stop) {
        const res = await post('/orders', WRITER).send('r');
        statuses[res.status] = (statuses[res.status] ?? 0) + 1;
      }
    };
    const callers = Array.from({ length: 8 }, caller);
    let reloads = 0;
    for (let round = 0; round < 20; round++) {
      const extra = round % 2 === 0 ? [{ name: 'late', path: '/late', queue: tenant }] : [];
      writeFileSync(routesFile, stringify(routesDocument(extra)));
      expect(bridge.reloadRoutes().routes).toBe(4 + extra.length);
      reloads += 1;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    stop = true;
    await Promise.all(callers);
    const total = Object.values(statuses).reduce((sum, count) => sum + count, 0);
    console.log(`reload under load: ${reloads} reloads, ${total} requests, statuses ${JSON.stringify(statuses)}`);
    expect(Object.keys(statuses)).toEqual(['200']);
    expect(total).toBeGreaterThan(20);

    writeFileSync(routesFile, stringify(routesDocument([{ name: 'late', path: '/late', queue: tenant }])));
    bridge.reloadRoutes();
    expect((await request(fixture.bridge.baseUrl).post('/late').send('l')).status).toBe(200);
    writeFileSync(routesFile, 'routes:\n  - name: broken\n    path: /broken\n');
    expect(() => bridge.reloadRoutes()).toThrow(
      'route "broken" (routes[0]): queue or exchange and routingKey is required',
    );
    // The routes in force stay: /late still answers.
    expect((await request(fixture.bridge.baseUrl).post('/late').send('l')).status).toBe(200);
  });
});

describe('the process and its routes file', () => {
  it('refuses an invalid routes file at start with exit 78, naming the route and the field', async () => {
    const broken = join(dir, 'broken.yaml');
    writeFileSync(broken, stringify({ routes: [{ name: 'slow', path: '/slow', queue: 'q', timeoutMs: 0 }] }));
    const { code, stderr } = await runBridgeProcessUntilExit({ ROUTES_FILE: broken });
    expect(code).toBe(78);
    expect(stderr).toContain(`${broken}: route "slow" (routes[0]): timeoutMs must be a whole number from 1 to`);
  });

  it('reloads on SIGHUP', async () => {
    const file = join(dir, 'sighup.yaml');
    writeFileSync(file, stringify({ routes: [{ name: 'first', path: '/first', queue: tenant }] }));
    const bridge = await startBridgeProcess({ ROUTES_FILE: file });
    try {
      expect((await request(bridge.baseUrl).post('/second').send('x')).status).toBe(404);
      // Callers keep calling /first through five reloads that keep it: none may see anything but 200.
      const statuses: Record<string, number> = {};
      let calling = true;
      const caller = async () => {
        while (calling) {
          const res = await request(bridge.baseUrl).post('/first').send('x');
          statuses[res.status] = (statuses[res.status] ?? 0) + 1;
        }
      };
      const callers = Array.from({ length: 8 }, caller);
      for (let reload = 1; reload <= 5; reload++) {
        bridge.child.kill('SIGHUP');
        await waitFor(
          () => bridge.logs.filter((line) => line.msg === 'routes reloaded').length === reload,
          5_000,
          `reload ${reload}`,
        );
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      calling = false;
      await Promise.all(callers);
      console.log(`SIGHUP under load: 5 reloads, statuses ${JSON.stringify(statuses)}`);
      expect(Object.keys(statuses)).toEqual(['200']);

      writeFileSync(file, stringify({ routes: [{ name: 'second', path: '/second', queue: tenant }] }));
      bridge.child.kill('SIGHUP');
      await waitFor(
        () => bridge.logs.filter((line) => line.msg === 'routes reloaded').length === 6,
        5_000,
        'the reload with /second',
      );
      const res = await request(bridge.baseUrl).post('/second').send('after reload');
      expect(res.status).toBe(200);
      expect(res.text).toBe('after reload');
      expect((await request(bridge.baseUrl).post('/first').send('x')).status).toBe(404);
    } finally {
      await bridge.stop();
    }
  });
});
