import { describe, expect, it } from 'vitest';
import { HttpProblem, PROBLEM_TYPE_PREFIX, type ProblemCode, problemDocument } from '../../src/http/problems.js';
import { outcomeProblem, replyStatus, replyToHttp } from '../../src/http/response-mapping.js';
import type { Reply } from '../../src/rpc/outcome.js';

function reply(fields: Partial<Omit<Reply, 'body'>>, body = 'b'): Reply {
  return { body: Buffer.from(body), contentType: undefined, contentEncoding: undefined, headers: {}, ...fields };
}

describe('replyToHttp', () => {
  it('maps content type, encoding, status and other headers', () => {
    const http = replyToHttp(
      reply({
        contentType: 'application/json',
        contentEncoding: 'gzip',
        headers: { 'http-status': 202, count: 3, ok: true, name: 'grüße', traceparent: 'x', nested: { a: 1 } },
      }),
      'q',
    );
    expect(http.status).toBe(202);
    expect(Object.fromEntries(http.headers)).toEqual({
      'Content-Type': 'application/json',
      'Content-Encoding': 'gzip',
      'Amqp-Header-count': '3',
      'Amqp-Header-ok': 'true',
      'Amqp-Header-name': Buffer.from('grüße').toString('latin1'),
    });
  });

  it('defaults to 200 and application/octet-stream, and passes the body through uncopied', () => {
    const message = reply({});
    const http = replyToHttp(message, 'q');
    expect(http.status).toBe(200);
    expect(http.headers).toContainEqual(['Content-Type', 'application/octet-stream']);
    expect(http.body).toBe(message.body);
  });

  it('skips header names and values HTTP cannot carry', () => {
    const http = replyToHttp(reply({ headers: { 'bad name': 'x', split: 'a\r\nInjected: 1' } }), 'q');
    expect(http.headers.map(([name]) => name)).toEqual(['Content-Type']);
  });

  it.each([199, 600, 200.5, '2xx', 'abc', true, null])('refuses http-status %j as a bad reply', (value) => {
    expect(() => replyStatus(value, 'q')).toThrow(HttpProblem);
  });

  it('accepts http-status as a numeric string', () => {
    expect(replyStatus('404', 'q')).toBe(404);
  });
});

type FailedOutcome = Parameters<typeof outcomeProblem>[0];

interface Expected<K extends FailedOutcome['kind']> {
  readonly outcome: Extract<FailedOutcome, { kind: K }>;
  readonly status: number;
  readonly code: ProblemCode;
  /** Only 503s ask the caller to come back. */
  readonly retryAfterSeconds?: number;
  /** What of the outcome the detail must carry (its reason). */
  readonly detail?: string;
}

/**
 * Every way a call can fail, with what the caller gets. Typed over the whole union: a new kind of
 * outcome without a row here is a type error (CI type-checks the tests), and its row is tested below.
 */
const FAILURES: { readonly [K in FailedOutcome['kind']]: Expected<K> } = {
  unroutable: {
    outcome: { kind: 'unroutable', replyCode: 312, replyText: 'NO_ROUTE' },
    status: 404,
    code: 'unroutable',
    detail: '312 NO_ROUTE',
  },
  'exchange-not-found': { outcome: { kind: 'exchange-not-found' }, status: 404, code: 'exchange-not-found' },
  'exchange-name-refused': { outcome: { kind: 'exchange-name-refused' }, status: 400, code: 'invalid-request' },
  'exchange-forbidden': {
    outcome: { kind: 'exchange-forbidden', reason: 'ACCESS_REFUSED - write access' },
    status: 403,
    code: 'forbidden',
    detail: 'ACCESS_REFUSED - write access',
  },
  lost: {
    outcome: { kind: 'lost', reason: 'channel closed' },
    status: 502,
    code: 'request-lost',
    detail: 'channel closed',
  },
  timeout: { outcome: { kind: 'timeout' }, status: 504, code: 'timeout' },
  cancelled: { outcome: { kind: 'cancelled' }, status: 502, code: 'request-lost' },
  unavailable: {
    outcome: { kind: 'unavailable', reason: 'ECONNREFUSED', retryAfterMs: 2_500 },
    status: 503,
    code: 'broker-unavailable',
    retryAfterSeconds: 3,
    detail: 'ECONNREFUSED',
  },
  overloaded: {
    outcome: { kind: 'overloaded', reason: '3 in flight' },
    status: 503,
    code: 'overloaded',
    retryAfterSeconds: 1,
    detail: '3 in flight',
  },
  nacked: { outcome: { kind: 'nacked' }, status: 503, code: 'broker-rejected', retryAfterSeconds: 1 },
};

describe('outcomeProblem', () => {
  it.each(Object.entries(FAILURES))('answers %s with its status, problem type and Retry-After', (_kind, expected) => {
    const problem = outcomeProblem(expected.outcome, 'q');
    const document = problemDocument(problem, 'id-1');
    expect({ status: document.status, type: document.type, target: document.target }).toEqual({
      status: expected.status,
      type: PROBLEM_TYPE_PREFIX + expected.code,
      target: 'q',
    });
    expect(problem.options.retryAfterSeconds).toBe(expected.retryAfterSeconds);
    if (expected.detail !== undefined) expect(problem.detail).toContain(expected.detail);
  });

  it('gives a 503 of the broker a Retry-After of at least one second, rounded up', () => {
    const retryAfter = (retryAfterMs: number) =>
      outcomeProblem({ kind: 'unavailable', reason: 'down', retryAfterMs }, 'q').options.retryAfterSeconds;
    expect([0, 1, 1000, 1001, 2500].map(retryAfter)).toEqual([1, 1, 1, 2, 3]);
  });
});
