import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { methodNotAllowed } from '../../src/http/app.js';
import { openApiPath } from '../../src/http/openapi.js';
import { PROBLEM_TYPE_PREFIX, PROBLEMS } from '../../src/http/problems.js';
import { RPC_PATHS } from '../../src/http/rpc-path.js';
import { listenOnLoopback, startTestBridge, type TestBridge } from '../helpers/bridge.js';

let bridge: TestBridge;

beforeAll(async () => {
  bridge = await startTestBridge();
});

afterAll(async () => {
  await bridge?.close();
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

describe('openapi.yaml', () => {
  it('is served as YAML and documents every route the app has, and no route it lacks', async () => {
    const res = await request(bridge.baseUrl).get('/openapi.yaml');
    expect(res.status).toBe(200);
    const document = parse(res.text) as { paths: Record<string, Record<string, unknown>> };
    // The RPC operations run outside express's router (the hot path); the rest is express's.
    const routes = [...listRoutes(bridge.bridge.app), ...RPC_PATHS.map((path) => ({ method: 'post', path }))];
    const documented = Object.entries(document.paths).flatMap(([path, operations]) =>
      Object.keys(operations).map((method) => `${method} ${path}`),
    );
    const served = routes.map((route) => `${route.method} ${openApiPath(route.path)}`);
    expect(served.sort()).toEqual(documented.sort());
  });

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
    for (const path of RPC_PATHS) {
      const responses = document.paths[openApiPath(path)]?.post?.responses ?? {};
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

interface RouteInfo {
  readonly method: string;
  readonly path: string;
}

/** Express 5 keeps its routes on app.router.stack (and nested routers' stacks). */
function listRoutes(app: unknown): RouteInfo[] {
  type Layer = {
    route?: { path: string | string[]; methods: Record<string, boolean>; stack: Array<{ handle: unknown }> };
    handle?: { stack?: Layer[] };
  };
  const walk = (stack: Layer[]): RouteInfo[] =>
    stack.flatMap((layer) => {
      if (layer.route?.stack.some((inner) => inner.handle === methodNotAllowed)) return [];
      if (layer.route) {
        const paths = Array.isArray(layer.route.path) ? layer.route.path : [layer.route.path];
        return Object.keys(layer.route.methods).flatMap((method) => paths.map((path) => ({ method, path })));
      }
      return layer.handle?.stack ? walk(layer.handle.stack) : [];
    });
  return walk((app as { router: { stack: Layer[] } }).router.stack);
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
