import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { PROBLEM_TYPE_PREFIX, PROBLEMS } from '../../src/http/problems.js';
import { listenOnLoopback, startTestBridge, type TestBridge } from '../helpers/bridge.js';
import { uniqueName } from '../helpers/broker.js';

let bridge: TestBridge;
const routesDir = mkdtempSync(join(tmpdir(), 'openapi-routes-'));

beforeAll(async () => {
  bridge = await startTestBridge();
});

afterAll(async () => {
  await bridge?.close();
  rmSync(routesDir, { recursive: true, force: true });
});

describe('operational endpoints', () => {
  it('says it is alive on /healthz', async () => {
    const res = await request(bridge.baseUrl).get('/healthz');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ status: 'ok' });
  });

  it('says it is ready on /readyz while connected with every reply consumer, and 503 once shutting down', async () => {
    const ready = await request(bridge.baseUrl).get('/readyz');
    expect(ready.status).toBe(200);
    expect(ready.body.checks).toEqual({
      connected: true,
      replyConsumers: true,
      notBlocked: true,
      notShuttingDown: true,
    });

    const draining = await startTestBridge();
    try {
      draining.bridge.beginShutdown();
      const res = await request(draining.baseUrl).get('/readyz');
      expect(res.status).toBe(503);
      expect(res.body.checks.notShuttingDown).toBe(false);
      const rpc = await request(draining.baseUrl).post('/rpc/anything').send('x');
      expect(rpc.status).toBe(503);
      expect(rpc.headers['retry-after']).toBe('1');
      expect(rpc.body.type).toBe(`${PROBLEM_TYPE_PREFIX}shutting-down`);
    } finally {
      await draining.close();
    }
  });

  it('serves Prometheus metrics, including the RPC latency histogram and the unroutable counter', async () => {
    await request(bridge.baseUrl).post('/rpc/test.operational.unroutable').send('x');
    const res = await request(bridge.baseUrl).get('/metrics');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    expect(res.text).toContain('# TYPE rpc_request_duration_seconds histogram');
    expect(res.text).toContain('rpc_unroutable_total{queue="test.operational.unroutable"} 1');
    expect(res.text).toContain('amqp_connected 1');
    expect(res.text).toContain('nodejs_eventloop_lag_seconds');
  });

  it('answers 503 with Retry-After at once while the broker is unreachable', async () => {
    const offline = await startOfflineBridge();
    try {
      const started = Date.now();
      const res = await request(offline.baseUrl).post('/rpc/anything').send('x');
      expect(res.status).toBe(503);
      expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect(res.body.type).toBe(`${PROBLEM_TYPE_PREFIX}broker-unavailable`);
      expect(Date.now() - started).toBeLessThan(500);
      const ready = await request(offline.baseUrl).get('/readyz');
      expect(ready.status).toBe(503);
      expect(ready.body.checks.connected).toBe(false);
    } finally {
      await offline.close();
    }
  });
});

/** The raw operations, as the contract writes them: what the status check below walks. */
const RAW_OPERATIONS = [
  '/rpc/{queue}',
  '/rpc/{exchange}/{routingKey}',
  '/publish/{queue}',
  '/publish/{exchange}/{routingKey}',
];
const OPERATIONAL = [
  'get /healthz',
  'get /metrics',
  'get /openapi.yaml',
  'get /readyz',
  'get /calls/{id}',
  'head /calls/{id}',
  'delete /calls/{id}',
];

/** A routes file with a named route of each kind (fixed queue, templated exchange, other method). */
function writeRoutesFile(): string {
  const file = join(routesDir, `${uniqueName('routes')}.yaml`);
  writeFileSync(
    file,
    stringify({
      routes: [
        { name: 'create-order', path: '/orders', queue: uniqueName('orders') },
        {
          name: 'order-events',
          path: '/orders/:orderId/events',
          operation: 'publish',
          exchange: uniqueName('events'),
          routingKey: 'order.{orderId}',
        },
        { name: 'tenant-echo', method: 'PUT', path: '/tenants/:tenant/echo', queue: '{tenant}' },
      ],
    }),
  );
  return file;
}

const NAMED = ['post /orders', 'post /orders/{orderId}/events', 'put /tenants/{tenant}/echo'];
const RAW = RAW_OPERATIONS.map((path) => `post ${path}`);

/**
 * Requests an HTTP client could send that no contract here documents: each must be answered as
 * "no such route" (404 not-found) or 405, so a route the app serves without documenting it is noticed.
 */
const UNDOCUMENTED = [
  'post /rpc',
  'get /rpc',
  'post /publish',
  'post /rpc/a/b/c',
  'post /publish/a/b/c',
  'post /RPC/q',
  'get /rpc/q',
  'put /rpc/q',
  'get /publish/q',
  'get /metrics/x',
  'delete /metrics',
  'post /healthz',
  'get /openapi.json',
  'get /',
  'get /orders',
  'post /orders/7',
  'post /tenants/t/echo',
  'get /calls',
  'put /calls/x',
  'post /calls/x',
];

const CONFIGURATIONS: ReadonlyArray<{
  readonly name: string;
  /** The bridge's environment; the file's own bridge when absent. */
  readonly env?: () => Record<string, string>;
  readonly documented: readonly string[];
}> = [
  { name: 'without a routes file', documented: [...OPERATIONAL, ...RAW] },
  {
    name: 'with a routes file (raw routes off)',
    env: () => ({ ROUTES_FILE: writeRoutesFile() }),
    documented: [...OPERATIONAL, ...NAMED],
  },
  {
    name: 'with a routes file and ROUTES_RAW_ENABLED=true',
    env: () => ({ ROUTES_FILE: writeRoutesFile(), ROUTES_RAW_ENABLED: 'true' }),
    documented: [...OPERATIONAL, ...RAW, ...NAMED],
  },
];

describe('openapi.yaml', () => {
  for (const configuration of CONFIGURATIONS) {
    it(`is served as YAML, ${configuration.name}, and documents exactly the routes an HTTP client finds served`, async () => {
      const served = configuration.env === undefined ? bridge : await startTestBridge(configuration.env());
      try {
        const res = await request(served.baseUrl).get('/openapi.yaml');
        expect(res.status).toBe(200);
        const document = parse(res.text) as { paths: Record<string, Record<string, unknown>> };
        const documented = Object.entries(document.paths).flatMap(([path, operations]) =>
          Object.keys(operations).map((method) => `${method} ${path}`),
        );
        expect(documented.sort()).toEqual([...configuration.documented].sort());

        // Every documented operation is served: a real request with concrete path parameters is not
        // answered "no such route" (to a queue or exchange nobody declared, it gets 404 of another kind).
        for (const operation of documented) {
          const [method = '', path = ''] = operation.split(' ');
          const answer = await ask(
            served.baseUrl,
            method,
            // A named route's parameter takes no dots unless its pattern says so: none here.
            path.replace(/\{[^}]+\}/g, () => uniqueName('p').replaceAll('.', '-')),
          );
          expect(answer.status, `${operation}: ${answer.summary}`).not.toBe(405);
          expect(answer.type, `${operation}: ${answer.summary}`).not.toBe(NOT_FOUND);
        }

        // And nothing undocumented is: each of these is answered "no such route" or 405.
        for (const probe of UNDOCUMENTED) {
          const [method = '', path = ''] = probe.split(' ');
          const documentedAs = documented.find((operation) => matches(operation, method, path));
          if (documentedAs !== undefined) throw new Error(`the probe ${probe} is documented (${documentedAs})`);
          const answer = await ask(served.baseUrl, method, path);
          expect(`${probe}: ${answer.summary}`).toMatch(
            new RegExp(
              `^${literally(probe)}: HTTP (404 ${literally(NOT_FOUND)} No route for |405 ${literally(NOT_ALLOWED)} )`,
            ),
          );
        }
      } finally {
        if (served !== bridge) await served.close();
      }
    });
  }

  it('lists every status the RPC routes can answer with, and every problem type', async () => {
    const res = await request(bridge.baseUrl).get('/openapi.yaml');
    const document = parse(res.text) as {
      paths: Record<string, { post?: { responses: Record<string, unknown> } }>;
      components: { schemas: { Problem: { properties: { type: { enum: string[] } } } } };
    };
    // not-found and method-not-allowed answer paths and methods outside the contract.
    const outsideRoutes = new Set(['not-found', 'method-not-allowed']);
    const rpcStatuses = Object.entries(PROBLEMS)
      .filter(([code]) => !outsideRoutes.has(code))
      .map(([, problem]) => String(problem.status));
    expect(rpcStatuses.length).toBeGreaterThan(5);
    for (const path of RAW_OPERATIONS) {
      const responses = document.paths[path]?.post?.responses ?? {};
      const success = path.startsWith('/publish/') ? '202' : '200';
      for (const status of [success, ...rpcStatuses])
        expect(Object.keys(responses), `${path} ${status}`).toContain(status);
    }
    const types = document.components.schemas.Problem.properties.type.enum;
    expect(types.sort()).toEqual(
      Object.keys(PROBLEMS)
        .map((code) => PROBLEM_TYPE_PREFIX + code)
        .sort(),
    );
  });
});

const NOT_FOUND = `${PROBLEM_TYPE_PREFIX}not-found`;
const NOT_ALLOWED = `${PROBLEM_TYPE_PREFIX}method-not-allowed`;
/** `text` as a regular expression that matches it literally. */
const literally = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

interface Answer {
  readonly status: number;
  readonly type: unknown;
  readonly detail: unknown;
  /** Status and problem, for an assertion's message. */
  readonly summary: string;
}

/** One real HTTP request, as a client would send it (a short timeout, in case a worker listens). */
async function ask(baseUrl: string, method: string, path: string): Promise<Answer> {
  const init: RequestInit = { method: method.toUpperCase(), headers: { 'Amqp-Timeout': '1000' } };
  if (method !== 'get' && method !== 'head' && method !== 'delete') {
    init.body = 'x';
    init.headers = { ...init.headers, 'Content-Type': 'text/plain' };
  }
  const res = await fetch(baseUrl + path, init);
  const text = await res.text();
  let problem: { type?: unknown; detail?: unknown } = {};
  // A HEAD answer has the problem's headers but no body.
  if (text !== '' && res.headers.get('content-type')?.startsWith('application/problem+json'))
    problem = JSON.parse(text);
  return {
    status: res.status,
    type: problem.type,
    detail: problem.detail,
    summary: `HTTP ${res.status} ${String(problem.type ?? '')} ${String(problem.detail ?? '')}`,
  };
}

/** Whether `method path` is an instance of the documented `operation` (`post /rpc/{queue}`). */
function matches(operation: string, method: string, path: string): boolean {
  const [documentedMethod, template = ''] = operation.split(' ');
  const pattern = template.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{[^}]+\}/g, '[^/]+');
  return documentedMethod === method && new RegExp(`^${pattern}$`).test(path);
}

/** A bridge pointed at a port where no broker listens; it serves HTTP but never becomes ready. */
async function startOfflineBridge() {
  const { createBridge } = await import('../../src/bridge.js');
  const { loadConfig } = await import('../../src/config/config.js');
  const { createLogger } = await import('../../src/observability/logger.js');
  const config = loadConfig({
    AMQP_URL: 'amqp://guest:guest@127.0.0.1:1',
    AMQP_RECONNECT_MIN_MS: '2000',
    LOG_LEVEL: 'silent',
  });
  const offline = createBridge(config, createLogger('silent'));
  offline.start();
  const server = await listenOnLoopback(offline.handler, config);
  return {
    baseUrl: `http://127.0.0.1:${server.port}`,
    async close() {
      await server.close(500);
      await offline.stop();
    },
  };
}
