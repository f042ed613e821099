/**
 * The admission decision on its own: what a caller may reach once the target is resolved. The
 * attacks through real HTTP and a real broker are in test/integration/route-admission.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { Caller } from '../../src/http/access/access-control.js';
import { createAdmission } from '../../src/http/access/admission.js';
import { quotaKey } from '../../src/http/access/caller-quota.js';
import { HttpProblem } from '../../src/http/problems.js';
import { exchangeTarget, queueTarget } from '../../src/http/request-mapping.js';
import { type NamedRoute, RouteTable } from '../../src/http/routes/route-table.js';
import { parseRoutesFile } from '../../src/http/routes/routes-file.js';
import { CallerQuota } from '../../src/rpc/caller-quota.js';

const file = parseRoutesFile(
  stringify({
    tokens: [{ name: 'ops', sha256: 'a'.repeat(64), roles: ['admin'] }],
    routes: [
      { name: 'admin', path: '/admin', queue: 'jobs.admin', requires: { roles: ['admin'] } },
      { name: 'reports', path: '/reports/:id', queue: 'reports.{id}', requires: { roles: ['reports'] } },
      { name: 'open', method: 'PUT', path: '/jobs/:name', queue: 'jobs.{name}' },
      { name: 'fixed-open', path: '/status', queue: 'jobs.admin' },
    ],
  }),
  'routes.yaml',
  { maxTimeoutMs: 1000, maxBodyBytes: 100, reservedPaths: [], reservedPrefixes: [] },
);
const table = new RouteTable(file.routes, { limits: { defaultTimeoutMs: 1, maxTimeoutMs: 1 }, maxBodyBytes: 1 });
const route = (method: string, url: string): NamedRoute => {
  const match = table.match(method, url);
  if (match?.kind !== 'named') throw new Error(`no route for ${method} ${url}`);
  return match.route;
};
const caller = (roles: string[], authenticated = true): Caller => ({
  name: authenticated ? 'someone' : undefined,
  tokenName: undefined,
  roles,
  authenticated,
});
const admission = (overrides: Partial<Parameters<typeof createAdmission>[0]> = {}) =>
  createAdmission({
    routes: file.routes,
    rawRoles: undefined,
    allowedQueues: undefined,
    allowedExchanges: undefined,
    tokensRequired: false,
    credentialsConfigured: true,
    ...overrides,
  });
const refusal = (decide: () => void): string | undefined => {
  try {
    decide();
    return undefined;
  } catch (err) {
    if (!(err instanceof HttpProblem)) throw err;
    return `${err.status} ${err.detail}`;
  }
};

describe('admission', () => {
  it("guards a route's target on every way a caller can choose it, not on another fixed route", () => {
    const decide = admission();
    const reach = (roles: string[], viaRoute: NamedRoute | undefined, target = queueTarget('jobs.admin')) =>
      refusal(() => decide.admit({ caller: caller(roles), route: viaRoute, target }));
    expect(reach([], undefined)).toBe(
      '403 The queue jobs.admin is guarded by the route admin, which needs one of the roles admin',
    );
    expect(reach([], route('PUT', '/jobs/admin'))).toBe(
      '403 The queue jobs.admin is guarded by the route admin, which needs one of the roles admin',
    );
    expect(reach(['admin'], route('PUT', '/jobs/admin'))).toBeUndefined();
    // The operator pointed /status at that queue: a fixed target is that route's own decision.
    expect(reach([], route('POST', '/status'))).toBeUndefined();
    // A templated guard: whatever reports.{id} can produce.
    expect(reach([], undefined, queueTarget('reports.7'))).toBe(
      '403 The queue reports.7 is guarded by the route reports, which needs one of the roles reports',
    );
    expect(reach([], undefined, queueTarget('reports.7.x'))).toBeUndefined();
    expect(reach([], undefined, queueTarget('jobs.other'))).toBeUndefined();
  });

  it('needs a credential on the raw routes, and one of ROUTES_RAW_ROLES when set', () => {
    const target = queueTarget('jobs.other');
    expect(refusal(() => admission().admit({ caller: caller([], false), route: undefined, target }))).toBe(
      '401 This bridge needs Authorization: Bearer <token>',
    );
    const limited = admission({ rawRoles: ['raw'] });
    expect(refusal(() => limited.admit({ caller: caller(['admin']), route: undefined, target }))).toBe(
      '403 The raw routes (/rpc/..., /publish/...) needs one of the roles raw',
    );
    expect(refusal(() => limited.admit({ caller: caller(['raw']), route: undefined, target }))).toBeUndefined();
  });

  it('applies the allowlists to every route, named ones included', () => {
    const decide = admission({ allowedQueues: ['jobs.*'] });
    const admitted = (target = queueTarget('payments.jobs')) =>
      refusal(() => decide.admit({ caller: caller(['admin']), route: route('PUT', '/jobs/x'), target }));
    expect(admitted()).toBe('403 This bridge does not allow calls to queue "payments.jobs"');
    expect(admitted(exchangeTarget('amq.topic', 'k'))).toBe(
      '403 This bridge allows only the targets on ALLOWED_QUEUES; exchanges are closed while ALLOWED_EXCHANGES is unset',
    );
    expect(admitted(queueTarget('jobs.x'))).toBeUndefined();
  });
});

describe('the per-caller share', () => {
  it('holds at most its limit per caller, and forgets a caller with nothing in flight', () => {
    const quota = new CallerQuota(2);
    expect([quota.tryAcquire('a'), quota.tryAcquire('a'), quota.tryAcquire('a'), quota.tryAcquire('b')]).toEqual([
      true,
      true,
      false,
      true,
    ]);
    quota.release('a');
    expect(quota.tryAcquire('a')).toBe(true);
    for (const key of ['a', 'a', 'b']) quota.release(key);
    expect(quota.callers).toBe(0);
  });

  it('counts a caller by its verified identity, else by its address', () => {
    const base = { roles: [], authenticated: true } as const;
    expect(quotaKey({ ...base, name: 'shop', tokenName: 'shop' }, '10.0.0.1')).toBe('token:shop');
    expect(quotaKey({ ...base, name: 'svc', tokenName: undefined }, '10.0.0.1')).toBe('jwt:svc');
    expect(
      quotaKey({ ...base, name: 'bob', tokenName: undefined, brokerLogin: { username: 'bob', password: 'p' } }, 'x'),
    ).toBe('broker:bob');
    // A shared AUTH_TOKENS token names nobody: its holders are told apart by address.
    expect(quotaKey({ ...base, name: undefined, tokenName: undefined }, '10.0.0.1')).toBe('address:10.0.0.1');
  });
});
