import { readFileSync } from 'node:fs';
import type { ConsumeMessage } from 'amqplib';
import { Registry } from 'prom-client';
import request from 'supertest';
import { describe, expect, it, onTestFinished } from 'vitest';
import { parse } from 'yaml';
import { createMetrics, registerGauges } from '../../src/observability/metrics.js';
import { startTestBridge, waitFor } from '../helpers/bridge.js';
import { AMQP_URL, startRawWorker, uniqueName } from '../helpers/broker.js';
import { useEchoBridge } from '../helpers/fixture.js';

const fixture = useEchoBridge({ LOG_LEVEL: 'info' });
const { echoQueue } = fixture;

describe('metrics after a mixed workload', () => {
  it('move by exactly what happened: ok, timeout, unroutable, rejected, late', async () => {
    const silent = uniqueName('silent');
    const nobody = uniqueName('nobody');
    await fixture.broker.channel.assertQueue(silent, { durable: false, expires: 30_000 });
    onTestFinished(async () => {
      await fixture.broker.channel.deleteQueue(silent).catch(() => undefined);
    });
    const bodies = ['a', 'bb', 'ccc'];
    for (const body of bodies) {
      const res = await request(fixture.bridge.baseUrl)
        .post(`/rpc/${echoQueue}`)
        .set('Content-Type', 'text/plain')
        .send(body);
      expect(res.status).toBe(200);
    }
    expect((await request(fixture.bridge.baseUrl).post(`/rpc/${silent}?timeout=100`).send('x')).status).toBe(504);
    expect((await request(fixture.bridge.baseUrl).post(`/rpc/${nobody}`).send('x')).status).toBe(404);
    expect((await request(fixture.bridge.baseUrl).post(`/rpc/${echoQueue}?timeout=0`).send('x')).status).toBe(400);
    expect((await request(fixture.bridge.baseUrl).get('/healthz')).status).toBe(200);

    const { bridge } = fixture;
    const m = bridge.metric.bind(bridge);
    const count = 'rpc_request_duration_seconds_count';
    expect(await m(count, { queue: echoQueue, outcome: 'ok' })).toBe(3);
    expect(await m(count, { queue: echoQueue, outcome: 'rejected' })).toBe(1);
    expect(await m(count, { queue: silent, outcome: 'timeout' })).toBe(1);
    expect(await m(count, { queue: nobody, outcome: 'unroutable' })).toBe(1);
    expect(await m('rpc_timeouts_total', { queue: silent })).toBe(1);
    expect(await m('rpc_unroutable_total', { queue: nobody })).toBe(1);
    expect(await m('rpc_request_bytes_sum', { queue: echoQueue })).toBe(6);
    expect(await m('rpc_response_bytes_sum', { queue: echoQueue })).toBe(6);
    expect(await m('rpc_response_bytes_count', { queue: echoQueue })).toBe(3);
    const http = 'http_request_duration_seconds_count';
    expect(await m(http, { method: 'POST', route: '/rpc/:queue', status_code: '200' })).toBe(3);
    expect(await m(http, { method: 'POST', route: '/rpc/:queue', status_code: '504' })).toBe(1);
    expect(await m(http, { method: 'GET', route: '/healthz', status_code: '200' })).toBe(1);
    expect(await m('rpc_in_flight')).toBe(0);
    expect(await m('amqp_connected')).toBe(1);
    expect(await m('amqp_connection_blocked')).toBe(0);
  });

  it('label HTTP metrics by route pattern, never by the raw path', async () => {
    await request(fixture.bridge.baseUrl).get('/no/such/path/12345');
    const text = await fixture.bridge.bridge.metrics.registry.metrics();
    expect(text).not.toContain('12345');
    expect(
      await fixture.bridge.metric('http_request_duration_seconds_count', { route: 'unmatched', status_code: '404' }),
    ).toBe(1);
  });
});

describe('logs', () => {
  it('write one JSON line per RPC request that tells its story, and never a secret', async () => {
    const silent = uniqueName('logged');
    await fixture.broker.channel.assertQueue(silent, { durable: false, expires: 30_000 });
    onTestFinished(async () => {
      await fixture.broker.channel.deleteQueue(silent).catch(() => undefined);
    });
    const res = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${silent}`)
      .set('Amqp-Timeout', '100')
      .set('X-Request-Id', 'story-1')
      .set('Authorization', 'Bearer top-secret-token')
      .set('Cookie', 'session=secret-cookie')
      .send('hello');
    expect(res.status).toBe(504);
    await waitFor(
      () => fixture.bridge.logs.some((line) => (line.req as { id?: string } | undefined)?.id === 'story-1'),
      2_000,
      'the log line',
    );
    const line = fixture.bridge.logs.find((entry) => (entry.req as { id?: string } | undefined)?.id === 'story-1');
    expect(line).toMatchObject({
      level: 50,
      msg: 'request completed',
      req: { id: 'story-1', method: 'POST', url: `/rpc/${silent}` },
      res: { statusCode: 504 },
      rpc: { route: '/rpc/:queue', target: silent, outcome: 'timeout', bytesIn: 5 },
    });
    expect((line?.rpc as { correlationId?: string } | undefined)?.correlationId).toMatch(/^[0-9a-f-]{36}$/);
    expect(line?.responseTime).toBeGreaterThanOrEqual(100);

    const everything = fixture.bridge.logs.map((entry) => JSON.stringify(entry)).join('\n');
    expect(everything).not.toContain('top-secret-token');
    expect(everything).not.toContain('secret-cookie');
    expect(everything).not.toContain(`:${new URL(AMQP_URL).password}@`);
    expect(everything).toContain('"msg":"amqp connected"');
  });
});

describe('logs of URLs with a query', () => {
  it('keep the path and the parameter names, never a value (a token in the URL stays out)', async () => {
    const token = 'a-valid-token-0123456789';
    const secured = await startTestBridge({ AUTH_TOKENS: token, LOG_LEVEL: 'info' });
    try {
      const leaked = 'leaked-secret-in-query-42';
      const refused = await request(secured.baseUrl)
        .post(`/rpc/${echoQueue}?access_token=${leaked}&timeout=5000`)
        .set('X-Request-Id', 'query-401')
        .send('x');
      expect(refused.status).toBe(401);
      const served = await request(secured.baseUrl)
        .post(`/rpc/${echoQueue}?timeout=5000&${leaked}`)
        .set('Authorization', `Bearer ${token}`)
        .set('X-Request-Id', 'query-200')
        .send('x');
      expect(served.status).toBe(200);
      const probe = await request(secured.baseUrl)
        .get(`/healthz?access_token=${leaked}`)
        .set('X-Request-Id', 'query-get');
      expect(probe.status).toBe(200);

      const urlOf = (id: string) =>
        (secured.logs.find((entry) => (entry.req as { id?: string } | undefined)?.id === id)?.req as { url?: string })
          ?.url;
      await waitFor(() => urlOf('query-get') !== undefined && urlOf('query-200') !== undefined, 2_000, 'the log lines');
      expect(urlOf('query-401')).toBe(`/rpc/${echoQueue}?access_token=[redacted]&timeout=[redacted]`);
      expect(urlOf('query-200')).toBe(`/rpc/${echoQueue}?timeout=[redacted]&[redacted]`);
      expect(urlOf('query-get')).toBe('/healthz?access_token=[redacted]');
      expect(secured.logs.map((entry) => JSON.stringify(entry)).join('\n')).not.toContain(leaked);
    } finally {
      await secured.close();
    }
  });
});

describe('trace context', () => {
  it('passes the caller trace on to the worker, and starts one (not sampled) when the caller has none', async () => {
    const queue = uniqueName('traced');
    const seen: ConsumeMessage[] = [];
    await startRawWorker(fixture.broker, queue, (message, reply) => {
      seen.push(message);
      reply(Buffer.from('ok'), { headers: { traceparent: '00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01' } });
    });
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const traced = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${queue}`)
      .set('traceparent', traceparent)
      .set('tracestate', 'vendor=1')
      .send('x');
    const untraced = await request(fixture.bridge.baseUrl).post(`/rpc/${queue}`).send('x');
    // A later version is read for the fields version 00 defines, and passed on as version 00.
    const future = '01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-later-field';
    await request(fixture.bridge.baseUrl).post(`/rpc/${queue}`).set('traceparent', future).send('x');
    expect(seen[0]?.properties.headers).toMatchObject({ traceparent, tracestate: 'vendor=1' });
    // Without tracing configured the bridge records nothing of a trace it starts: marked not sampled.
    expect(seen[1]?.properties.headers?.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
    expect(seen[2]?.properties.headers?.traceparent).toBe('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00');
    // The worker's own trace header is not the caller's business.
    expect(traced.headers['amqp-header-traceparent']).toBeUndefined();
    expect(untraced.headers['amqp-header-traceparent']).toBeUndefined();
  });
});

describe('dashboard and alert rules', () => {
  const exported = async (): Promise<Set<string>> => {
    const registry = new Registry();
    createMetrics(registry, 10);
    registerGauges(registry, {
      inFlight: () => 0,
      connected: () => false,
      blocked: () => false,
      logBytesDropped: () => 0,
      callerConnections: () => 0,
      callsHeld: () => 0,
      callsWaiting: () => 0,
    });
    const names = (await registry.getMetricsAsJSON()).map((metric) => metric.name);
    return new Set(names);
  };
  const metricNamesIn = (expr: string): string[] => {
    const withoutLabels = expr.replace(/\{[^}]*\}/g, '').replace(/"[^"]*"/g, '');
    const words = withoutLabels.match(/[a-z_][a-z0-9_]*/g) ?? [];
    return words.filter((word) =>
      /_(seconds|total|bytes|connected|blocked|flight|held|waiting)(_bucket|_sum|_count)?$|^nodejs_|^process_/.test(
        word,
      ),
    );
  };
  const baseName = (name: string) => name.replace(/_(bucket|sum|count)$/, '');

  it('query only metrics the bridge exports', async () => {
    const names = await exported();
    // A row (a heading between panels) has no targets.
    const dashboard = JSON.parse(readFileSync('observability/grafana/dashboards/amqp-rpc-bridge.json', 'utf8')) as {
      panels: Array<{ title: string; targets?: Array<{ expr: string }> }>;
    };
    const alerts = parse(readFileSync('observability/prometheus/alerts.yml', 'utf8')) as {
      groups: Array<{ rules: Array<{ alert: string; expr: string }> }>;
    };
    const exprs = [
      ...dashboard.panels.flatMap((panel) =>
        (panel.targets ?? []).map((target) => ({ where: panel.title, expr: target.expr })),
      ),
      ...alerts.groups.flatMap((group) => group.rules.map((rule) => ({ where: rule.alert, expr: rule.expr }))),
    ];
    expect(exprs.length).toBeGreaterThan(10);
    for (const { where, expr } of exprs) {
      const used = metricNamesIn(expr);
      expect(used.length, `${where}: ${expr}`).toBeGreaterThan(0);
      for (const name of used) expect(names.has(baseName(name)) || names.has(name), `${where} uses ${name}`).toBe(true);
    }
  });
  it('show exemplars on the latency panel and link their trace_id to a trace UI', () => {
    const dashboard = JSON.parse(readFileSync('observability/grafana/dashboards/amqp-rpc-bridge.json', 'utf8')) as {
      panels: Array<{ title: string; targets?: Array<{ expr: string; exemplar?: boolean }> }>;
    };
    const withExemplars = dashboard.panels.flatMap((panel) =>
      (panel.targets ?? []).filter((target) => target.exemplar),
    );
    expect(withExemplars.map((target) => target.expr)).toContainEqual(
      expect.stringContaining('rpc_request_duration_seconds_bucket'),
    );
    const provisioning = parse(
      readFileSync('observability/grafana/provisioning/datasources/prometheus.yml', 'utf8'),
    ) as { datasources: Array<{ uid: string; jsonData?: { exemplarTraceIdDestinations?: unknown } }> };
    const prometheus = provisioning.datasources.find((source) => source.uid === 'prometheus');
    expect(prometheus?.jsonData?.exemplarTraceIdDestinations).toEqual([
      { name: 'trace_id', url: '$TRACE_UI_URL$${__value.raw}' },
    ]);
    // Prometheus keeps exemplars only with this feature on.
    const compose = parse(readFileSync('docker-compose.yml', 'utf8')) as {
      services: Record<string, { command?: string[]; environment?: Record<string, string> }>;
    };
    expect(compose.services.prometheus?.command).toContain('--enable-feature=exemplar-storage');
    // Grafana gets the trace UI's address, or the link would be the bare trace id.
    // biome-ignore lint/suspicious/noTemplateCurlyInString: Compose's own ${VAR:-default}, as the file has it
    expect(compose.services.grafana?.environment?.TRACE_UI_URL).toBe('${TRACE_UI_URL:-http://localhost:16686/trace/}');
  });
});
