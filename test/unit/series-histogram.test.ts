import { Histogram, type LabelValues, Registry, type RegistryContentType } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { bucketIndex, SeriesHistogram } from '../../src/observability/series-histogram.js';

const BOUNDS = [0.001, 0.01, 0.1, 1];
const OBSERVED: ReadonlyArray<readonly [string, string, number]> = [
  ['orders', 'ok', 0.0004],
  ['orders', 'ok', 0.001],
  ['orders', 'ok', 0.05],
  ['orders', 'timeout', 30],
  ['a "quoted"\nqueue\\', 'ok', 0.2],
  ['orders', 'ok', 0],
];

function registryFor(contentType: RegistryContentType): Registry<RegistryContentType> {
  const registry = new Registry<RegistryContentType>();
  registry.setContentType(contentType);
  return registry;
}

/** The same observations through prom-client's own histogram and through ours, each on a registry of its own. */
async function bothExpositions(
  contentType: typeof Registry.PROMETHEUS_CONTENT_TYPE | typeof Registry.OPENMETRICS_CONTENT_TYPE,
) {
  const theirs = registryFor(contentType);
  const ours = registryFor(contentType);
  const reference = new Histogram({
    name: 'rpc_request_duration_seconds',
    help: 'Time',
    labelNames: ['queue', 'outcome'] as const,
    buckets: BOUNDS,
    registers: [theirs],
    enableExemplars: contentType === Registry.OPENMETRICS_CONTENT_TYPE,
  });
  const histogram = new SeriesHistogram('rpc_request_duration_seconds', 'Time', ['queue', 'outcome'], BOUNDS, ours);
  // A label set asked for and never observed shows nowhere, as prom-client's labels() children do not.
  histogram.series('never', 'observed');
  reference.labels('never', 'observed');
  for (const [queue, outcome, value] of OBSERVED) {
    reference.labels(queue, outcome).observe(value);
    histogram.series(queue, outcome).observe(value);
  }
  return { theirs: await theirs.metrics(), ours: await ours.metrics(), reference, histogram };
}

describe('SeriesHistogram', () => {
  it('exposes exactly what prom-client’s Histogram exposes for the same observations (Prometheus text)', async () => {
    const { theirs, ours } = await bothExpositions(Registry.PROMETHEUS_CONTENT_TYPE);
    expect(ours).toBe(theirs);
    expect(ours).toContain('rpc_request_duration_seconds_bucket{le="0.001",queue="orders",outcome="ok"} 3');
    expect(ours).toContain('rpc_request_duration_seconds_bucket{le="+Inf",queue="orders",outcome="timeout"} 1');
    expect(ours).not.toContain('never');
  });

  it('exposes the same OpenMetrics text, exemplars on their buckets included', async () => {
    const { theirs, ours, reference, histogram } = await bothExpositions(Registry.OPENMETRICS_CONTENT_TYPE);
    expect(ours).toBe(theirs);
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    // prom-client's typings ask for the metric's own label names in an exemplar, which is not what one carries.
    const exemplarLabels = { trace_id: traceId } as unknown as LabelValues<'queue' | 'outcome'>;
    reference.observe({ labels: { queue: 'orders', outcome: 'ok' }, value: 0.05, exemplarLabels });
    histogram.series('orders', 'ok').observeIn(bucketIndex(BOUNDS, 0.05), 0.05, { trace_id: traceId });
    const exemplarLine = (text: string) =>
      text
        .split('\n')
        .find((line) => line.includes(traceId))
        ?.replace(/ [0-9.]+$/, ' <timestamp>');
    const registryOf = async (metric: { get(): Promise<unknown> }) => {
      const registry = registryFor(Registry.OPENMETRICS_CONTENT_TYPE);
      registry.registerMetric(metric as unknown as Histogram);
      return registry.metrics();
    };
    const ourLine = exemplarLine(await registryOf(histogram));
    expect(ourLine).toBe(exemplarLine(await registryOf(reference)));
    expect(ourLine).toBe(
      `rpc_request_duration_seconds_bucket{le="0.1",queue="orders",outcome="ok"} 5 # {trace_id="${traceId}"} 0.05 <timestamp>`,
    );
  });

  it('keeps a NaN out of the sum, and zeroes in place on reset so that kept series stay exposed', async () => {
    const registry = new Registry();
    const histogram = new SeriesHistogram('sizes', 'Sizes', ['queue'], [10, 100], registry);
    const kept = histogram.series('q');
    kept.observe(5);
    kept.observe(Number.NaN);
    expect(await registry.metrics()).toContain('sizes_sum{queue="q"} 5');
    histogram.reset();
    expect(await registry.metrics()).not.toContain('sizes_count{queue="q"}');
    kept.observe(50);
    expect(await registry.metrics()).toContain('sizes_bucket{le="100",queue="q"} 1');
  });

  it('puts a value on a bound in that bound’s bucket, and past the last in +Inf', () => {
    expect([0, 0.001, 0.0011, 1, 2].map((value) => bucketIndex(BOUNDS, value))).toEqual([0, 0, 1, 3, 4]);
  });
});
