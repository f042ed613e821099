import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { reconnectDelay } from '../../src/amqp/backoff.js';
import { createMetrics, type RpcOutcomeLabel } from '../../src/observability/metrics.js';
import { readMetric } from '../helpers/metric-text.js';

describe('reconnectDelay', () => {
  it('doubles from the minimum and never passes the maximum', () => {
    const top = () => 1;
    expect([1, 2, 3, 4, 5, 10, 100].map((n) => reconnectDelay(n, 100, 1000, top))).toEqual([
      100, 200, 400, 800, 1000, 1000, 1000,
    ]);
  });

  it('spreads each delay over the upper half of its range', () => {
    expect(reconnectDelay(3, 100, 10_000, () => 0)).toBe(200);
    expect(reconnectDelay(3, 100, 10_000, () => 0.5)).toBe(300);
  });
});

describe('metrics', () => {
  it('caps the queue label at METRICS_MAX_QUEUES distinct values, then says "other"', async () => {
    const metrics = createMetrics(new Registry(), 2);
    const observe = (target: string, outcome: RpcOutcomeLabel, requestBytes?: number) =>
      metrics.observeRpc({ target, outcome, seconds: 0.001, requestBytes, responseBytes: undefined });
    observe('a', 'ok', 10);
    observe('b', 'ok');
    observe('c', 'unroutable', 2000);
    observe('a', 'timeout');
    const text = await metrics.registry.metrics();
    expect(readMetric(text, 'rpc_request_duration_seconds_count', { queue: 'other', outcome: 'unroutable' })).toBe(1);
    expect(readMetric(text, 'rpc_unroutable_total', { queue: 'other' })).toBe(1);
    expect(readMetric(text, 'rpc_timeouts_total', { queue: 'a' })).toBe(1);
    expect(readMetric(text, 'rpc_request_bytes_count', { queue: 'other' })).toBe(1);
    expect(readMetric(text, 'rpc_request_bytes_bucket', { queue: 'a', le: '64' })).toBe(1);
    expect(text).not.toContain('queue="c"');
  });
});
