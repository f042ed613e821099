import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { RouteTable, resolveTarget } from '../../src/http/routes/route-table.js';
import { parseRoutesFile, type RouteLimits } from '../../src/http/routes/routes-file.js';

const LIMITS: RouteLimits = {
  maxTimeoutMs: 300_000,
  maxBodyBytes: 1_048_576,
  reservedPaths: ['/healthz', '/readyz', '/metrics', '/openapi.yaml'],
  reservedPrefixes: ['/rpc/', '/publish/'],
};
const DIGEST = 'a'.repeat(64);

function parse(document: unknown) {
  return parseRoutesFile(typeof document === 'string' ? document : stringify(document), 'routes.yaml', LIMITS);
}

const route = (fields: Record<string, unknown>) => ({
  routes: [{ name: 'orders', path: '/orders', queue: 'q', ...fields }],
});

describe('the routes file', () => {
  it('reads a route with its defaults, and a templated exchange route', () => {
    const { routes } = parse({
      tokens: [{ name: 'billing', sha256: DIGEST, roles: ['billing'] }],
      routes: [
        { name: 'orders', path: '/orders', queue: 'orders.create' },
        {
          name: 'events',
          method: 'PUT',
          path: '/orders/:id/events',
          operation: 'publish',
          exchange: 'orders',
          routingKey: 'order.{id}',
          timeoutMs: 500,
          maxBodyBytes: 10,
          requires: { roles: ['ops'], tokens: ['billing'] },
          headers: { source: 'edge', retries: 3 },
        },
      ],
    });
    expect(routes[0]).toMatchObject({ method: 'POST', operation: 'rpc', target: { queue: ['orders.create'] } });
    expect(routes[1]).toMatchObject({
      method: 'PUT',
      operation: 'publish',
      target: { exchange: ['orders'], routingKey: ['order.', { param: 'id' }] },
      timeoutMs: 500,
      maxBodyBytes: 10,
      roles: ['ops'],
      tokens: ['billing'],
      headers: { source: 'edge', retries: '3' },
    });
  });

  it.each([
    ['not YAML', 'routes: [', 'routes.yaml is not valid YAML'],
    ['no routes', { routes: [] }, 'routes.yaml: routes lists no route'],
    ['a misspelt field', route({ timeout: 5 }), 'route "orders" (routes[0]): timeout is not a route field'],
    ['no name', { routes: [{ path: '/x', queue: 'q' }] }, 'route routes[0]: name is required'],
    [
      'no target',
      { routes: [{ name: 'x', path: '/x' }] },
      'route "x" (routes[0]): queue or exchange and routingKey is required',
    ],
    ['two targets', route({ exchange: 'e', routingKey: 'k' }), 'queue and exchange/routingKey exclude each other'],
    [
      'exchange without key',
      { routes: [{ name: 'x', path: '/x', exchange: 'e' }] },
      'routingKey is required with exchange',
    ],
    [
      'unknown placeholder',
      route({ queue: 'q.{tenant}' }),
      "queue uses {tenant}, which is no parameter of the route's path",
    ],
    ['bad method', route({ method: 'TRACE' }), 'method must be one of POST, PUT, PATCH, DELETE, GET'],
    ['bad operation', route({ operation: 'cast' }), 'operation must be rpc or publish'],
    ['zero timeout', route({ timeoutMs: 0 }), 'timeoutMs must be a whole number from 1 to 300000 (RPC_MAX_TIMEOUT_MS)'],
    [
      'huge body',
      route({ maxBodyBytes: 2_000_000 }),
      'maxBodyBytes must be a whole number from 0 to 1048576 (MAX_BODY_BYTES)',
    ],
    ['a reserved path', route({ path: '/metrics' }), 'path /metrics is served by the bridge itself'],
    [
      'under the raw routes',
      route({ path: '/rpc/orders' }),
      'path /rpc/orders lies under /rpc/, which the raw routes serve',
    ],
    ['a query in the path', route({ path: '/orders?x=1' }), 'path has the segment "orders?x=1"'],
    ['a parameter twice', route({ path: '/a/:id/:id' }), 'path uses the parameter :id twice'],
    [
      'an unknown token',
      route({ requires: { tokens: ['nobody'] } }),
      'names token "nobody", which tokens does not define',
    ],
    [
      'a header the bridge sets',
      route({ headers: { traceparent: 'x' } }),
      'headers: traceparent is set by the bridge itself',
    ],
    ['a clear-text token', { tokens: [{ name: 't', sha256: 'secret' }], ...route({}) }, 'sha256 must be the token'],
  ])('refuses %s, naming the route and the field', (_case, document, message) => {
    expect(() => parse(document)).toThrow(message);
  });

  it('refuses two routes that take the same requests, whatever their parameters are called', () => {
    expect(() =>
      parse({
        routes: [
          { name: 'a', path: '/o/:id', queue: 'q' },
          { name: 'b', path: '/o/:key', queue: 'q' },
        ],
      }),
    ).toThrow('routes "a" and "b" both take POST /o/:key');
  });

  it('never echoes a token digest in its errors', () => {
    const digest = 'b'.repeat(63);
    expect(() => parse({ tokens: [{ name: 't', sha256: digest }], ...route({}) })).toThrow(
      expect.objectContaining({ message: expect.not.stringContaining(digest) }),
    );
  });
});

describe('the route table', () => {
  const table = new RouteTable(
    parse({
      routes: [
        { name: 'events', path: '/orders/:id/events', exchange: 'orders', routingKey: 'order.{id}.event' },
        { name: 'tenant', method: 'PUT', path: '/t/:tenant', queue: 'jobs.{tenant}' },
      ],
    }).routes,
    { limits: { defaultTimeoutMs: 1000, maxTimeoutMs: 5000 }, maxBodyBytes: 100 },
  );

  it('matches by method and shape, binds parameters and fills the target from them', () => {
    const match = table.match('POST', '/orders/a%2Fb/events?timeout=5');
    expect(match).toMatchObject({ kind: 'named', params: { id: 'a%2Fb' }, query: 'timeout=5' });
    if (match?.kind !== 'named') throw new Error('no match');
    expect(resolveTarget(match)).toEqual({
      exchange: 'orders',
      routingKey: 'order.a/b.event',
      label: 'orders:order.a/b.event',
    });
    expect(table.match('POST', '/orders/1/events/')).toMatchObject({ kind: 'named' });
  });

  it('tells a wrong method from no route at all', () => {
    expect(table.match('GET', '/orders/1/events')).toEqual({ kind: 'wrong-method', allow: 'POST' });
    expect(table.match('POST', '/orders//events')).toBeUndefined();
    expect(table.match('POST', '/orders/1')).toBeUndefined();
  });

  it('checks a filled target like a raw one', () => {
    const match = table.match('PUT', '/t/%E0%A4%A');
    if (match?.kind !== 'named') throw new Error('no match');
    expect(() => resolveTarget(match)).toThrow('malformed percent-escape');
  });
});
