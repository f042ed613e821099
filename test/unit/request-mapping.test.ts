import { describe, expect, it } from 'vitest';
import { HttpProblem } from '../../src/http/problems.js';
import {
  exchangeTarget,
  fromHeaderBytes,
  MAX_MESSAGE_HEADERS,
  messageFields,
  messageHeaders,
  parsePriority,
  parseTimeout,
  queueTarget,
} from '../../src/http/request-mapping.js';

const limits = { defaultTimeoutMs: 30_000, maxTimeoutMs: 300_000 };

function problemOf(action: () => unknown): HttpProblem {
  try {
    action();
  } catch (err) {
    if (err instanceof HttpProblem) return err;
    throw err;
  }
  throw new Error('expected a problem');
}

describe('targets', () => {
  it('sends a queue through the default exchange', () => {
    expect(queueTarget('orders')).toEqual({ exchange: '', routingKey: 'orders', label: 'orders' });
    expect(queueTarget('a/b')).toMatchObject({ routingKey: 'a/b' });
  });

  it('accepts 255 bytes and refuses 256', () => {
    expect(queueTarget('q'.repeat(255)).routingKey).toHaveLength(255);
    expect(problemOf(() => queueTarget('q'.repeat(256))).code).toBe('invalid-request');
  });

  it.each(['amq.gen-1', 'amq.rabbitmq.reply-to', 'amq.direct.reply-to.abc'])(
    'refuses the reserved queue %s',
    (name) => {
      expect(problemOf(() => queueTarget(name)).status).toBe(400);
    },
  );

  it('allows the standard amq. exchanges but not broker-internal ones or reply-to routing keys', () => {
    expect(exchangeTarget('amq.topic', 'a.b')).toEqual({
      exchange: 'amq.topic',
      routingKey: 'a.b',
      label: 'amq.topic:a.b',
    });
    expect(problemOf(() => exchangeTarget('amq.rabbitmq.trace', 'x')).status).toBe(400);
    expect(problemOf(() => exchangeTarget('ex', 'amq.rabbitmq.reply-to.xyz')).status).toBe(400);
  });
});

describe('timeout', () => {
  it('prefers the header, then the query, then the default', () => {
    expect(parseTimeout('100', '200', limits, 'q')).toBe(100);
    expect(parseTimeout(undefined, '200', limits, 'q')).toBe(200);
    expect(parseTimeout(undefined, undefined, limits, 'q')).toBe(30_000);
  });

  it.each(['0', '-1', '1.5', '1e3', 'Infinity', '9007199254740992', '300001', ' 5', ''])('refuses %j', (value) => {
    expect(problemOf(() => parseTimeout(value, undefined, limits, 'q')).code).toBe('invalid-request');
  });
});

describe('priority', () => {
  it('takes 0 to 255', () => {
    expect(parsePriority('0', 'q')).toBe(0);
    expect(parsePriority('255', 'q')).toBe(255);
    expect(parsePriority(undefined, 'q')).toBeUndefined();
  });
  it.each(['256', '-1', '1.5', 'high'])('refuses %j', (value) => {
    expect(problemOf(() => parsePriority(value, 'q')).status).toBe(400);
  });
});

describe('headers that cross to the broker', () => {
  it('maps Amqp-Header-* to lower-case message headers and drops everything else', () => {
    const table = messageHeaders(
      {
        'amqp-header-tenant': 'acme',
        authorization: 'Bearer x',
        cookie: 'a=b',
        'x-other': 'y',
        traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
        tracestate: 'vendor=1',
      },
      'q',
    );
    expect({ ...table }).toEqual({
      tenant: 'acme',
      traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      tracestate: 'vendor=1',
    });
  });

  it('starts a new trace, not sampled, when the caller sent none, or a malformed one (dropping its tracestate)', () => {
    for (const headers of [
      {},
      { traceparent: 'garbage', tracestate: 'x=1' },
      { traceparent: `00-${'0'.repeat(32)}-b7ad6b7169203331-01` },
    ]) {
      const table = messageHeaders(headers, 'q');
      // Not sampled: the bridge records nothing of it, so it asks nobody downstream to (-00).
      expect(table.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
      expect(table.traceparent).not.toContain('0'.repeat(32));
      expect(table.tracestate).toBeUndefined();
    }
    expect(messageHeaders({}, 'q').traceparent).not.toBe(messageHeaders({}, 'q').traceparent);
  });

  it('keeps a header named __proto__ as a plain key', () => {
    const table = messageHeaders({ 'amqp-header-__proto__': 'x' }, 'q');
    expect(Object.keys(table)).toContain('__proto__');
    expect(Object.getPrototypeOf(table)).toBeNull();
  });

  it(`refuses more than ${MAX_MESSAGE_HEADERS} headers and a table over 32 KiB`, () => {
    const many = Object.fromEntries(
      Array.from({ length: MAX_MESSAGE_HEADERS + 1 }, (_, i) => [`amqp-header-h${i}`, 'v']),
    );
    expect(problemOf(() => messageHeaders(many, 'q')).status).toBe(400);
    expect(problemOf(() => messageHeaders({ 'amqp-header-big': 'x'.repeat(33 * 1024) }, 'q')).status).toBe(400);
  });

  it('recovers UTF-8 text from the latin1 string Node makes of header bytes', () => {
    const wire = Buffer.from('grüße', 'utf8').toString('latin1');
    expect(fromHeaderBytes(wire)).toBe('grüße');
    expect(fromHeaderBytes('plain')).toBe('plain');
  });

  it('collects the message properties from their headers', () => {
    const fields = messageFields(
      {
        'content-type': 'application/json',
        'content-encoding': 'gzip',
        'amqp-priority': '3',
        'amqp-type': 't',
        'amqp-message-id': 'm-1',
      },
      '1500',
      queueTarget('q'),
      limits,
    );
    expect(fields).toMatchObject({
      timeoutMs: 1500,
      contentType: 'application/json',
      contentEncoding: 'gzip',
      priority: 3,
      type: 't',
      messageId: 'm-1',
    });
  });
});

describe('globToRegExp', () => {
  it('matches * and ? and nothing else specially', async () => {
    const { globToRegExp } = await import('../../src/http/access/access-control.js');
    expect(globToRegExp('orders.*').test('orders.create')).toBe(true);
    expect(globToRegExp('orders.*').test('ordersXcreate')).toBe(false);
    expect(globToRegExp('job-?').test('job-1')).toBe(true);
    expect(globToRegExp('job-?').test('job-12')).toBe(false);
    expect(globToRegExp('a+b').test('a+b')).toBe(true);
    expect(globToRegExp('a+b').test('aab')).toBe(false);
  });
});
