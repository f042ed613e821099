import { describe, expect, it } from 'vitest';
import { HttpProblem } from '../../src/http/problems.js';
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

describe('outcomeProblem', () => {
  it('gives 503 with a Retry-After of at least one second', () => {
    const problem = outcomeProblem({ kind: 'unavailable', reason: 'down', retryAfterMs: 0 }, 'q');
    expect(problem.status).toBe(503);
    expect(problem.options.retryAfterSeconds).toBe(1);
    expect(
      outcomeProblem({ kind: 'unavailable', reason: 'down', retryAfterMs: 2500 }, 'q').options.retryAfterSeconds,
    ).toBe(3);
  });

  it('maps each failure to its status', () => {
    expect(outcomeProblem({ kind: 'unroutable', replyCode: 312, replyText: 'NO_ROUTE' }, 'q').status).toBe(404);
    expect(outcomeProblem({ kind: 'exchange-not-found' }, 'q').status).toBe(404);
    expect(outcomeProblem({ kind: 'lost', reason: 'x' }, 'q').status).toBe(502);
    expect(outcomeProblem({ kind: 'timeout' }, 'q').status).toBe(504);
  });
});
