import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { RouteTable, resolveTarget } from '../../src/http/routes/route-table.js';
import { parseRoutesFile, type RouteLimits } from '../../src/http/routes/routes-file.js';

const LIMITS: RouteLimits = {
  maxTimeoutMs: 300_000,
  maxBodyBytes: 1_048_576,
  reservedPaths: ['/healthz', '/readyz', '/metrics', '/openapi.yaml'],
  reservedPrefixes: ['/rpc/', '/publish/'].map((prefix) => ({
    prefix,
    servedBy: 'which the raw routes serve (turn them off with ROUTES_RAW_ENABLED=false)',
  })),
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
    [
      'x-caller as a route header',
      route({ headers: { 'X-Caller': 'admin' } }),
      'headers: X-Caller is set by the bridge itself',
    ],
    [
      'a pattern for no parameter',
      route({ path: '/o/:id', params: { key: '[0-9]+' } }),
      "params: key is no parameter of the route's path",
    ],
    [
      'a broken pattern',
      route({ path: '/o/:id', params: { id: '[0-9' } }),
      'params: id is not a valid regular expression',
    ],
    [
      'a pattern matching nothing',
      route({ path: '/o/:id', params: { id: '[0-9]*' } }),
      'params: id must not match the empty string',
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

  it('matches by method and shape, binds parameters (decoded) and fills the target from them', () => {
    const match = table.match('POST', '/orders/A-1%5F2/events?timeout=5');
    expect(match).toMatchObject({ kind: 'named', params: { id: 'A-1_2' }, query: 'timeout=5' });
    if (match?.kind !== 'named') throw new Error('no match');
    expect(resolveTarget(match)).toEqual({
      exchange: 'orders',
      routingKey: 'order.A-1_2.event',
      label: 'orders:order.A-1_2.event',
    });
    expect(table.match('POST', '/orders/1/events/')).toMatchObject({ kind: 'named' });
  });

  it.each([
    ['a dot (a topic separator)', '7.cancelled.x'],
    ['an encoded slash', 'a%2Fb'],
    ['a topic wildcard', '%23'],
    ['a star', '*'],
    ['a control character', 'a%0Ab'],
    ['a right-to-left override', '%E2%80%AEx'],
    ['other non-ASCII', 'j%C3%BCrgen'],
    ['a space', 'a%20b'],
  ])('refuses a parameter holding %s (400, naming the parameter)', (_case, value) => {
    const match = table.match('POST', `/orders/${value}/events`);
    if (match?.kind !== 'named') throw new Error('no match');
    expect(() => resolveTarget(match)).toThrow('The path parameter id must match [A-Za-z0-9_-]+ (route events)');
  });

  it("checks a value against the route's own pattern", () => {
    const own = new RouteTable(
      parse({
        routes: [{ name: 'v', path: '/v/:version', queue: 'jobs.{version}', params: { version: '[0-9]+\\.[0-9]+' } }],
      }).routes,
      { limits: { defaultTimeoutMs: 1000, maxTimeoutMs: 5000 }, maxBodyBytes: 100 },
    );
    const ok = own.match('POST', '/v/1.2');
    if (ok?.kind !== 'named') throw new Error('no match');
    expect(resolveTarget(ok).routingKey).toBe('jobs.1.2');
    const wrong = own.match('POST', '/v/1.2.3');
    if (wrong?.kind !== 'named') throw new Error('no match');
    expect(() => resolveTarget(wrong)).toThrow('The path parameter version must match [0-9]+\\.[0-9]+');
  });

  it('lets a literal segment win over a parameter whatever the file order, compared after decoding', () => {
    const both = new RouteTable(
      parse({
        routes: [
          { name: 'by-id', path: '/orders/:id', queue: 'orders.{id}' },
          { name: 'admin', path: '/orders/admin', queue: 'orders.admin', requires: { tokens: ['ops'] } },
          { name: 'a-then-param', path: '/a/:x/c', queue: 'q1' },
          { name: 'literal-then-param', path: '/a/b/:y', queue: 'q2' },
        ],
        tokens: [{ name: 'ops', sha256: DIGEST }],
      }).routes,
      { limits: { defaultTimeoutMs: 1000, maxTimeoutMs: 5000 }, maxBodyBytes: 100 },
    );
    const name = (url: string) => {
      const match = both.match('POST', url);
      return match?.kind === 'named' ? match.route.definition.name : match?.kind;
    };
    expect(name('/orders/admin')).toBe('admin');
    expect(name('/orders/%61dmin')).toBe('admin');
    expect(name('/orders/%61%64%6D%69%6E/')).toBe('admin');
    expect(name('/orders/7')).toBe('by-id');
    expect(name('/a/b/c')).toBe('literal-then-param');
    expect(name('/a/z/c')).toBe('a-then-param');
  });

  it('tells a wrong method from no route at all', () => {
    expect(table.match('GET', '/orders/1/events')).toEqual({ kind: 'wrong-method', allow: 'POST' });
    expect(table.match('POST', '/orders//events')).toBeUndefined();
    expect(table.match('POST', '/orders/1')).toBeUndefined();
  });

  it('takes a path with a malformed percent-escape for no route, and checks a filled target like a raw one', () => {
    expect(table.match('PUT', '/t/%E0%A4%A')).toBeUndefined();
    const ownPattern = new RouteTable(
      parse({ routes: [{ name: 'any', path: '/t/:x', queue: '{x}', params: { x: '.+' } }] }).routes,
      { limits: { defaultTimeoutMs: 1000, maxTimeoutMs: 5000 }, maxBodyBytes: 100 },
    );
    const match = ownPattern.match('POST', '/t/amq.gen-1');
    if (match?.kind !== 'named') throw new Error('no match');
    expect(() => resolveTarget(match)).toThrow('Queue names starting with "amq." are reserved');
  });
});
