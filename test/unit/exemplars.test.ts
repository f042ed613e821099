import { Registry, type RegistryContentType } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { createMetrics, EXEMPLAR_INTERVAL_MS } from '../../src/observability/metrics.js';

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';

describe('exemplars on the request-duration histograms', () => {
  it('are kept on an OpenMetrics registry and shown only to a scraper that asks for OpenMetrics', async () => {
    const registry = new Registry<RegistryContentType>();
    registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    const metrics = createMetrics(registry, 10);
    const observation = { target: 'q', outcome: 'ok', requestBytes: 1, responseBytes: 1 } as const;
    metrics.observeRpc({ ...observation, seconds: 0.003, traceId: TRACE });
    metrics.observeRpc({ ...observation, seconds: 0.004 });
    metrics.observePublish({ target: 'q', outcome: 'ok', seconds: 0.02, requestBytes: 1, traceId: TRACE });
    metrics.lateReplies.inc();

    const open = await metrics.expose('application/openmetrics-text; version=1.0.0');
    expect(open.contentType).toContain('application/openmetrics-text');
    expect(open.text).toContain(
      `rpc_request_duration_seconds_bucket{le="0.005",queue="q",outcome="ok"} 2 # {trace_id="${TRACE}"} 0.003`,
    );
    expect(open.text).toContain(
      `publish_request_duration_seconds_bucket{le="0.025",queue="q",outcome="ok"} 1 # {trace_id="${TRACE}"}`,
    );
    expect(open.text).toMatch(/# EOF\n$/);

    for (let i = 0; i < 2; i++) {
      const plain = await metrics.expose('text/plain');
      expect(plain.contentType).toContain('text/plain');
      expect(plain.text).not.toContain('trace_id');
      expect(plain.text).toContain('rpc_request_duration_seconds_count{queue="q",outcome="ok"} 2');
      // The OpenMetrics render before must not have renamed the counters.
      expect(plain.text).toMatch(/^rpc_late_replies_total 1$/m);
    }
  });

  it('cost nothing on the default (Prometheus) registry: no exemplar, whatever the scraper asks', async () => {
    const metrics = createMetrics(new Registry(), 10);
    metrics.observeRpc({
      target: 'q',
      outcome: 'ok',
      seconds: 0.003,
      requestBytes: 1,
      responseBytes: 1,
      traceId: TRACE,
    });
    const exposed = await metrics.expose('application/openmetrics-text; version=1.0.0');
    expect(exposed.contentType).toContain('text/plain');
    expect(exposed.text).not.toContain('trace_id');
  });

  it("replace a bucket's exemplar at most once a second; a request in another bucket gets its own at once", async () => {
    const registry = new Registry<RegistryContentType>();
    registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    let clock = 1_000_000;
    const metrics = createMetrics(registry, 10, () => clock);
    const observe = (seconds: number, traceId: string) =>
      metrics.observeRpc({ target: 'q', outcome: 'ok', seconds, requestBytes: 1, responseBytes: 1, traceId });
    const exemplarOf = async (le: string) => {
      const { text } = await metrics.expose('application/openmetrics-text; version=1.0.0');
      const line = text
        .split('\n')
        .find((l) => l.startsWith(`rpc_request_duration_seconds_bucket{le="${le}",queue="q",outcome="ok"}`));
      return line?.match(/trace_id="([0-9a-f]+)"/)?.[1];
    };
    const trace = (n: number) => n.toString(16).padStart(32, '0');

    observe(0.003, trace(1));
    clock += EXEMPLAR_INTERVAL_MS - 1;
    observe(0.004, trace(2)); // same bucket (le 0.005), too soon: counted, exemplar kept
    observe(2, trace(3)); // the slow bucket (le 2.5) has none yet
    expect(await exemplarOf('0.005')).toBe(trace(1));
    expect(await exemplarOf('2.5')).toBe(trace(3));

    clock += 1;
    observe(0.004, trace(4));
    expect(await exemplarOf('0.005')).toBe(trace(4));
    // Every observation counted, with an exemplar or without.
    const { text } = await metrics.expose('text/plain');
    expect(text).toContain('rpc_request_duration_seconds_count{queue="q",outcome="ok"} 4');

    clock -= 60_000; // set back: the next one is not held back a minute
    observe(0.004, trace(5));
    expect(await exemplarOf('0.005')).toBe(trace(5));
  });
});
