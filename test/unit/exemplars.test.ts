import { Registry, type RegistryContentType } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/observability/metrics.js';

const sources = {
  inFlight: () => 0,
  connected: () => true,
  blocked: () => false,
  logBytesDropped: () => 0,
  callerConnections: () => 0,
};
const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';

describe('exemplars on the request-duration histograms', () => {
  it('are kept on an OpenMetrics registry and shown only to a scraper that asks for OpenMetrics', async () => {
    const registry = new Registry<RegistryContentType>();
    registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    const metrics = createMetrics(registry, 10, sources);
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
    const metrics = createMetrics(new Registry(), 10, sources);
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
});
