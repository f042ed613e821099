import { Counter, Gauge, Histogram, Registry, type RegistryContentType } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { readMetric } from '../helpers/metric-text.js';

/** A real prom-client exposition: what the tests' readMetric reads from the bridge. */
async function exposition(contentType: RegistryContentType = Registry.PROMETHEUS_CONTENT_TYPE) {
  const registry = new Registry<RegistryContentType>();
  registry.setContentType(contentType);
  const registers = [registry];
  const closes = new Counter({ name: 'closes_total', help: 'h', labelNames: ['reason'] as const, registers });
  new Counter({ name: 'untouched_total', help: 'h', labelNames: ['reason'] as const, registers });
  new Gauge({ name: 'connected', help: 'h', registers }).set(1);
  const duration = new Histogram({ name: 'duration_seconds', help: 'h', labelNames: ['queue'] as const, registers });
  closes.labels('404').inc();
  closes.labels('406').inc(2);
  duration.labels('a').observe(0.2);
  duration.labels('b').observe(0.3);
  return registry.metrics();
}

describe('readMetric, which the metric checks of every suite go through', () => {
  it('reads a series, and sums the series a partial label set matches', async () => {
    const text = await exposition();
    expect(readMetric(text, 'connected')).toBe(1);
    expect(readMetric(text, 'closes_total', { reason: '406' })).toBe(2);
    expect(readMetric(text, 'closes_total')).toBe(3);
    expect(readMetric(text, 'duration_seconds_count', { queue: 'a' })).toBe(1);
    expect(readMetric(text, 'duration_seconds_count')).toBe(2);
    expect(readMetric(text, 'duration_seconds_bucket', { queue: 'b', le: '0.5' })).toBe(1);
  });

  it('throws for a metric that is not exposed at all, however the check was meant to read it', async () => {
    const text = await exposition();
    expect(() => readMetric(text, 'closes_renamed_total')).toThrow('metric closes_renamed_total is not exposed');
    expect(() => readMetric(text, 'closes_renamed_total', {}, { absentIsZero: true })).toThrow('is not exposed');
    // A histogram exposes _count, _sum and _bucket, not its bare name.
    expect(() => readMetric(text, 'duration_seconds')).toThrow('is not exposed');
    expect(() => readMetric(text, 'duration_seconds_total')).toThrow('is not exposed');
  });

  it('throws for a series no sample matches, unless the caller says an untouched series is zero', async () => {
    const text = await exposition();
    expect(() => readMetric(text, 'closes_total', { reason: '320' })).toThrow('no series closes_total{"reason":"320"}');
    expect(() => readMetric(text, 'untouched_total')).toThrow('no series');
    expect(readMetric(text, 'closes_total', { reason: '320' }, { absentIsZero: true })).toBe(0);
    expect(readMetric(text, 'untouched_total', { reason: '404' }, { absentIsZero: true })).toBe(0);
    // Zero for an untouched series, but not for a label the family's series do not have.
    expect(() => readMetric(text, 'closes_total', { code: '404' }, { absentIsZero: true })).toThrow(
      'no series of closes_total has the label(s) code',
    );
  });

  it('reads OpenMetrics too, where a counter family is declared without _total', async () => {
    const text = await exposition(Registry.OPENMETRICS_CONTENT_TYPE);
    expect(text).toContain('# TYPE closes counter');
    expect(readMetric(text, 'closes_total', { reason: '404' })).toBe(1);
    expect(readMetric(text, 'duration_seconds_count', { queue: 'b' })).toBe(1);
    expect(() => readMetric(text, 'closes_renamed_total')).toThrow('is not exposed');
  });
});
