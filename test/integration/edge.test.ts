/**
 * The HTTP edge below the routes: what Node's HTTP layer refuses, request-target forms, and
 * pipelining. Raw sockets throughout: HTTP client libraries will not send most of this.
 */
import request from 'supertest';
import { describe, expect, it } from 'vitest';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { useEchoBridge } from '../helpers/fixture.js';
import { rawHttp, type WireResponse } from '../helpers/raw-http.js';

const fixture = useEchoBridge();
const { echoQueue } = fixture;

function expectProblem(response: WireResponse | undefined, status: number, code: string): void {
  expect(response?.status, JSON.stringify(response)).toBe(status);
  expect(response?.headers['content-type']).toBe('application/problem+json');
  const requestId = response?.headers['x-request-id'];
  expect(requestId).toMatch(/^[A-Za-z0-9._:@/+=-]{1,128}$/);
  expect(JSON.parse(response?.body ?? '')).toMatchObject({ type: PROBLEM_TYPE_PREFIX + code, status, requestId });
}

describe('what the HTTP layer refuses before any route runs', () => {
  const refusals: Array<[string, string, number, string]> = [
    ['an HTTP/1.1 request without Host', 'POST /rpc/q HTTP/1.1\r\nContent-Length: 0\r\n\r\n', 400, 'malformed-request'],
    [
      'an expectation other than 100-continue',
      'POST /rpc/q HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nContent-Length: 0\r\nConnection: close\r\n\r\n',
      417,
      'expectation-failed',
    ],
    ['bytes that are not HTTP', 'GARBAGE\r\n\r\n', 400, 'malformed-request'],
    [
      'headers over 16 KiB',
      `POST /rpc/q HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
      431,
      'headers-too-large',
    ],
  ];

  it.each(refusals)('answers %s with a problem document and a request id', async (_what, wire, status, code) => {
    const { responses } = await rawHttp(fixture.bridge.server.port, wire);
    expect(responses).toHaveLength(1);
    expectProblem(responses[0], status, code);
  });

  it('keeps a sane X-Request-Id the caller sent with a request it refuses', async () => {
    const { responses } = await rawHttp(
      fixture.bridge.server.port,
      'POST /rpc/q HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nX-Request-Id: mine-417\r\nConnection: close\r\n\r\n',
    );
    expectProblem(responses[0], 417, 'expectation-failed');
    expect(responses[0]?.headers['x-request-id']).toBe('mine-417');
  });

  it('still serves Expect: 100-continue', async () => {
    const { responses } = await rawHttp(
      fixture.bridge.server.port,
      `POST /rpc/${echoQueue} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok`,
    );
    expect(responses.map((response) => response.status)).toEqual([100, 200]);
    expect(responses[1]?.body).toBe('ok');
  });
});

describe('request-targets', () => {
  it('serves an RPC sent in absolute-form (RFC 9112 §3.2.2) by its path and query', async () => {
    const { responses } = await rawHttp(
      fixture.bridge.server.port,
      `POST http://bridge.example:8080/rpc/${echoQueue}?timeout=5000 HTTP/1.1\r\nHost: bridge.example:8080\r\n` +
        'Content-Type: text/plain\r\nContent-Length: 8\r\nConnection: close\r\n\r\nabsolute',
    );
    expect(responses[0]?.status, responses[0]?.body).toBe(200);
    expect(responses[0]?.body).toBe('absolute');
  });

  it('serves the operational routes in absolute-form too', async () => {
    const { responses } = await rawHttp(
      fixture.bridge.server.port,
      'GET http://bridge.example/healthz HTTP/1.1\r\nHost: bridge.example\r\nConnection: close\r\n\r\n',
    );
    expect(responses[0]?.status).toBe(200);
  });

  it('treats paths as case-sensitive: POST /RPC/{queue} is 404 not-found, not 405', async () => {
    for (const path of [`/RPC/${echoQueue}`, `/Rpc/${echoQueue}`, `/RPC/amq.direct/${echoQueue}`]) {
      const res = await request(fixture.bridge.baseUrl).post(path).send('x');
      expect(res.status, path).toBe(404);
      expect(res.body.type).toBe(`${PROBLEM_TYPE_PREFIX}not-found`);
      expect(res.body.requestId).toBe(res.headers['x-request-id']);
    }
    expect((await request(fixture.bridge.baseUrl).get(`/RPC/${echoQueue}`)).status).toBe(404);
  });

  it('answers 405 only for another method on an RPC path, saying which method is wrong', async () => {
    const res = await request(fixture.bridge.baseUrl).put(`/rpc/${echoQueue}`).send('x');
    expect(res.status).toBe(405);
    expect(res.headers.allow).toBe('POST');
    expect(res.body.type).toBe(`${PROBLEM_TYPE_PREFIX}method-not-allowed`);
    expect(res.body.detail).toBe(`PUT is not allowed on /rpc/${echoQueue}; only POST is`);
  });
});

describe('pipelining', () => {
  it('answers valid requests pipelined ahead of garbage, in order, before the 400 for the garbage', async () => {
    // The first reply is held back by the worker, so the garbage is refused while it is in flight.
    const rpc = (body: string, delayMs: number) =>
      `POST /rpc/${echoQueue} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nAmqp-Header-Delay-Ms: ${delayMs}\r\n` +
      `Content-Length: ${body.length}\r\n\r\n${body}`;
    const wire = `${rpc('first', 300)}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n${rpc('third', 0)}GARBAGE\r\n\r\n`;
    const { responses } = await rawHttp(fixture.bridge.server.port, wire);
    expect(responses.map((response) => response.status)).toEqual([200, 200, 200, 400]);
    expect(responses[0]?.body).toBe('first');
    expect(JSON.parse(responses[1]?.body ?? '')).toEqual({ status: 'ok' });
    expect(responses[2]?.body).toBe('third');
    expectProblem(responses[3], 400, 'malformed-request');
  });
});
