/**
 * Property-based: thousands of generated hostile requests against the running bridge. Whatever a
 * client sends, the answer is a documented status with a problem document, no broker channel closes,
 * the process stays up, and a good request afterwards still succeeds.
 */
import { request as httpRequest } from 'node:http';
import fc from 'fast-check';
import request from 'supertest';
import { describe, expect, it } from 'vitest';
import { useEchoBridge } from '../helpers/fixture.js';

const MAX_BODY_BYTES = 2048;
/** Every status the contract allows for a request that is not a valid call to a live worker. */
const DOCUMENTED = new Set([400, 404, 405, 413, 431, 503, 504]);

const fixture = useEchoBridge({ MAX_BODY_BYTES: String(MAX_BODY_BYTES), RPC_TIMEOUT_MS: '200', LOG_LEVEL: 'warn' });
const { echoQueue } = fixture;

interface RawResponse {
  readonly status: number;
  readonly contentType: string | undefined;
  readonly body: string;
}

/** node:http rather than supertest: the test must send exactly what it generated. */
function send(method: string, path: string, headers: Record<string, string>, body: Buffer): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: fixture.bridge.server.port, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          contentType: res.headers['content-type'],
          body: Buffer.concat(chunks).toString('utf8'),
        }),
      );
    });
    req.on('error', reject);
    req.end(body);
  });
}

const reserved = fc.constantFrom(
  'amq.gen-x',
  'amq.rabbitmq.reply-to',
  'amq.rabbitmq.reply-to.g1h2AA==.abc',
  'amq.direct.reply-to.x',
  'amq.rabbitmq.trace',
  'amq.rabbitmq.log',
);
const name = fc.oneof(
  fc.stringMatching(/^[a-z][a-z0-9.-]{0,30}$/),
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'grapheme', minLength: 60, maxLength: 90 }),
  fc.string({ unit: 'binary', maxLength: 30 }).map((value) => value.toWellFormed()),
  reserved,
  fc.constantFrom('..', '.', '%', '%zz', 'a%2Fb', '\u0000', '\u001f\u007f', ' ', 'é'.repeat(128), 'q'.repeat(256)),
);
/** A path segment: usually encoded properly, sometimes left raw (undecodable escapes, dots). */
const segment = fc.oneof(
  name.map((value) => encodeURIComponent(value)),
  fc.constantFrom('%', '%zz', '%E0%A4%A', '..', '.', '%00', '%2e%2e'),
);
const path = fc.oneof(
  segment.map((queue) => `/rpc/${queue}`),
  fc.tuple(segment, segment).map(([exchange, key]) => `/rpc/${exchange}/${key}`),
  fc.tuple(segment, segment, segment).map(([a, b, c]) => `/rpc/${a}/${b}/${c}`),
  fc
    .tuple(segment, fc.constantFrom('-1', '0', '1e3', '1.5', 'Infinity', String(2 ** 53), '', 'x'))
    .map(([queue, timeout]) => `/rpc/${queue}?timeout=${encodeURIComponent(timeout)}`),
);
const numberish = fc.constantFrom('-1', '0', '1e3', '1.5', 'Infinity', String(2 ** 53), '256', '', ' 7', 'NaN', '0x10');
/** Header values Node's client can send (printable ASCII and tab). */
const headerValue = fc.oneof(
  { arbitrary: fc.string({ maxLength: 50 }).map((value) => value.replace(/[^\t\x20-\x7e]/g, '')), weight: 12 },
  { arbitrary: fc.constantFrom('x'.repeat(256), ''), weight: 3 },
  { arbitrary: fc.constant('v'.repeat(64 * 1024)), weight: 1 },
);
const headers = fc.oneof(
  { arbitrary: fc.constant({}), weight: 1 },
  {
    weight: 2,
    arbitrary: fc.record(
      {
        'Amqp-Timeout': numberish,
        'Amqp-Priority': numberish,
        'Amqp-Type': headerValue,
        'Amqp-Message-Id': headerValue,
        'Content-Type': fc.constantFrom('application/json', 'text/plain; charset=utf-8', 'x'.repeat(300)),
        traceparent: headerValue,
      },
      { requiredKeys: [] },
    ),
  },
);
/** Mostly none; sometimes a few, the limit (64) and one past it; now and then thousands. */
const manyHeaders = fc
  .constantFrom(0, 0, 0, 0, 0, 0, 0, 0, 3, 20, 64, 65, 80, 3000)
  .map((count) => Object.fromEntries(Array.from({ length: count }, (_, i) => [`Amqp-Header-H${i}`, 'v'])));
const body = fc.oneof(
  fc.constant(Buffer.alloc(0)),
  fc.uint8Array({ maxLength: 64 }).map((bytes) => Buffer.from(bytes)),
  fc.constant(Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0xff, 0xfe, 0x7d])), // invalid UTF-8 "JSON"
  fc.constant(Buffer.alloc(MAX_BODY_BYTES + 1, 0x61)),
);
const method = fc.constantFrom('POST', 'POST', 'POST', 'GET', 'PUT', 'DELETE');

describe('hostile input', () => {
  it('gets a documented status and a problem document, and never closes a channel or crashes', async () => {
    let tried = 0;
    const statuses = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(method, path, headers, manyHeaders, body, async (verb, target, fields, extra, payload) => {
        tried += 1;
        const res = await send(verb, target, { ...fields, ...extra }, payload);
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        expect(DOCUMENTED, `${verb} ${target} -> ${res.status} ${res.body}`).toContain(res.status);
        expect(res.contentType).toBe('application/problem+json');
        const problem = JSON.parse(res.body) as { status: number; type: string };
        expect(problem.status).toBe(res.status);
        expect(problem.type).toMatch(/^tag:amqp-rpc-bridge,2026:problem\//);
      }),
      { numRuns: 1500 },
    );
    console.info(`hostile requests tried: ${tried}, by status: ${JSON.stringify(Object.fromEntries(statuses))}`);
    // The generators reach every kind of refusal, not just one.
    for (const status of [400, 404, 405, 413, 431]) expect(statuses.get(status) ?? 0).toBeGreaterThan(0);
    const { bridge } = fixture;
    // What the bridge warned of names the cause when a channel or the connection did go.
    const warnings = bridge.logs.filter(
      (line) => typeof line.level === 'number' && line.level >= 40 && line.msg !== 'request completed',
    );
    expect(warnings.map((line) => `${String(line.msg)} ${JSON.stringify(line.reason ?? line.err ?? '')}`)).toEqual([]);
    expect(await bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true })).toBe(0);
    expect(bridge.bridge.session.allChannelsOpen).toBe(true);
    const good = await request(bridge.baseUrl).post(`/rpc/${echoQueue}`).set('Content-Type', 'text/plain').send('fine');
    expect(good.status).toBe(200);
    expect(good.text).toBe('fine');
  }, 240_000);
});
