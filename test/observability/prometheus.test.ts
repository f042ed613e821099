import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { type RunningWorker, startEchoWorker } from '../../examples/echo-worker.js';
import { type BridgeProcess, startBridgeProcess } from '../helpers/bridge-process.js';
import { AMQP_URL, connectTestBroker, type TestBroker, uniqueName } from '../helpers/broker.js';
import { OtlpReceiver, SERVER } from '../helpers/otlp-receiver.js';
import { freePort } from '../helpers/ports.js';
import { requireBinary } from './tools.js';

const SHIPPED_CONFIG = 'observability/prometheus/prometheus.yml';
const RULES = 'observability/prometheus/alerts.yml';
const DASHBOARD = 'observability/grafana/dashboards/amqp-rpc-bridge.json';
/** Its prometheus service's command names the feature flags the shipped stack runs with (exemplar storage). */
const COMPOSE = 'docker-compose.yml';
/** The scrape job in the shipped config; the test scrapes through it, so its name is what queries see. */
const JOB = 'amqp-rpc-bridge';
/** Series that only exist once something went wrong, so a healthy bridge's panel for them is empty. */
const ONLY_AFTER_A_FAULT = ['amqp_channel_closes_total'];

interface Sample {
  readonly labels: Record<string, string>;
  readonly value: number;
}

interface RunningPrometheus {
  readonly baseUrl: string;
  /** Everything it logged so far. */
  output(): string;
  stop(): Promise<void>;
}

const echoQueue = uniqueName('scraped');
const silentQueue = uniqueName('scraped-silent');
const nobodyQueue = uniqueName('scraped-nobody');
const okBodies = ['a', 'bb', 'ccc', 'dddd', 'eeeee'];
const okCount = `rpc_request_duration_seconds_count{job="${JOB}", queue="${echoQueue}", outcome="ok"}`;
/** The caller's trace of the last RPC before a scrape: the exemplar Prometheus must then hold. */
const TRACED = '7aced0000000000000000000000000ff';

let dir: string | undefined;
let broker: TestBroker | undefined;
let worker: RunningWorker | undefined;
let bridge: BridgeProcess | undefined;
let prometheus: RunningPrometheus | undefined;
/** Where the bridge exports its spans: tracing on is what puts exemplars on the latency buckets. */
const receiver = new OtlpReceiver();
/** Set when the binary is missing: every test then fails with it, where a failed beforeAll would only skip them. */
let missingBinary: unknown;

beforeAll(async () => {
  try {
    requireBinary('prometheus');
  } catch (err) {
    missingBinary = err;
    return;
  }
  dir = mkdtempSync(join(tmpdir(), 'bridge-prometheus-'));
  broker = await connectTestBroker();
  worker = await startEchoWorker({ url: AMQP_URL, queue: echoQueue, durable: false });
  await broker.channel.assertQueue(silentQueue, { durable: false, expires: 60_000 });
  const endpoint = await receiver.start();
  bridge = await startBridgeProcess({
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_BSP_SCHEDULE_DELAY: '50',
  });

  const configFile = join(dir, 'prometheus.yml');
  writeFileSync(configFile, scrapeConfigFor(new URL(bridge.baseUrl).host));
  prometheus = await startPrometheus(configFile, join(dir, 'data'), shippedFeatureFlags());
  await settle(() => scalar(`up{job="${JOB}"}`), 1, 'Prometheus to scrape the bridge');

  // Two batches, the second after Prometheus has seen the first, so that rates are above zero. The
  // first ends with the one sampled RPC of the series (a bucket's exemplar is replaced at most once a
  // second, so the ones before it are unsampled): its trace id is the exemplar Prometheus scrapes next.
  const unsampled = { traceparent: `00-${'5a'.repeat(16)}-00f067aa0ba902b7-00` };
  for (const body of okBodies.slice(0, 2)) expect(await rpc(`/rpc/${echoQueue}`, body, unsampled)).toBe(200);
  const traceparent = `00-${TRACED}-00f067aa0ba902b7-01`;
  expect(await rpc(`/rpc/${echoQueue}`, okBodies[2] as string, { traceparent })).toBe(200);
  await settle(() => scalar(okCount), 3, 'Prometheus to see the first RPCs');
  for (const body of okBodies.slice(3)) expect(await rpc(`/rpc/${echoQueue}`, body)).toBe(200);
  expect(await rpc(`/rpc/${silentQueue}?timeout=200`, 'x')).toBe(504);
  expect(await rpc(`/rpc/${nobodyQueue}`, 'x')).toBe(404);
  await settle(() => scalar(okCount), okBodies.length, 'Prometheus to see all the RPCs');
});

afterAll(async () => {
  await prometheus?.stop();
  if (bridge !== undefined) await stopProcess(bridge.child, bridge.exited);
  await broker?.channel.deleteQueue(silentQueue).catch(() => undefined);
  await worker?.close();
  await broker?.close();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  await receiver.close();
});

describe('a real Prometheus scraping the bridge with the shipped scrape job', () => {
  it('has the bridge as a healthy target', async () => {
    const res = await fetch(new URL('/api/v1/targets', scraping().baseUrl));
    const body = (await res.json()) as {
      data: { activeTargets: Array<{ labels: Record<string, string>; health: string; lastError: string }> };
    };
    const targets = body.data.activeTargets.filter((target) => target.labels.job === JOB);
    expect(targets).toHaveLength(1);
    expect(targets[0]).toMatchObject({ health: 'up', lastError: '' });
  });

  it('counts every RPC by queue and outcome, exactly as sent', async () => {
    scraping();
    const job = `job="${JOB}"`;
    const count = 'rpc_request_duration_seconds_count';
    expect(await scalar(okCount)).toBe(okBodies.length);
    await expectSoon(`${count}{${job}, queue="${silentQueue}", outcome="timeout"}`, 1);
    await expectSoon(`${count}{${job}, queue="${nobodyQueue}", outcome="unroutable"}`, 1);
    await expectSoon(`rpc_timeouts_total{${job}, queue="${silentQueue}"}`, 1);
    await expectSoon(`rpc_unroutable_total{${job}, queue="${nobodyQueue}"}`, 1);
    const bytes = okBodies.join('').length;
    await expectSoon(`rpc_request_bytes_sum{${job}, queue="${echoQueue}"}`, bytes);
    await expectSoon(`rpc_response_bytes_sum{${job}, queue="${echoQueue}"}`, bytes);
    const http = 'http_request_duration_seconds_count';
    await expectSoon(`${http}{${job}, method="POST", route="/rpc/:queue", status_code="200"}`, okBodies.length);
    await expectSoon(`${http}{${job}, method="POST", route="/rpc/:queue", status_code="504"}`, 1);
    await expectSoon(`${http}{${job}, method="POST", route="/rpc/:queue", status_code="404"}`, 1);
  });

  it('sees the broker connection as it is, and nothing in flight', async () => {
    scraping();
    await expectSoon(`amqp_connected{job="${JOB}"}`, 1);
    await expectSoon(`amqp_connection_blocked{job="${JOB}"}`, 0);
    await expectSoon(`rpc_in_flight{job="${JOB}"}`, 0);
    await expectSoon(`amqp_reconnects_total{job="${JOB}"}`, 0);
    expect(await scalar(`nodejs_eventloop_lag_p99_seconds{job="${JOB}"}`)).toBeGreaterThan(0);
  });

  it("answers every dashboard query with the bridge's series", async () => {
    scraping();
    const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
      panels: Array<{ title: string; targets?: Array<{ expr: string }> }>;
    };
    const queries = dashboard.panels.flatMap((panel) =>
      (panel.targets ?? []).map((target) => ({ panel: panel.title, expr: target.expr })),
    );
    expect(queries.length).toBeGreaterThan(10);
    for (const { panel, expr } of queries) {
      // An invalid query throws, with Prometheus's error.
      const read = () => query(expr);
      if (ONLY_AFTER_A_FAULT.some((name) => expr.includes(name))) await read();
      else await expect.poll(read, { timeout: 10_000, message: `${panel}: ${expr}` }).not.toEqual([]);
    }
    // The latency panels show real quantiles for the queue the RPCs went to.
    for (const quantile of [0.5, 0.95, 0.99]) {
      const expr = `histogram_quantile(${quantile}, sum by (le, queue) (rate(rpc_request_duration_seconds_bucket{outcome="ok"}[1m])))`;
      const echo = (await query(expr)).find((sample) => sample.labels.queue === echoQueue);
      expect(echo?.value, expr).toBeGreaterThan(0);
      expect(echo?.value, expr).toBeLessThan(1);
    }
  });

  it('loads the alert rules, evaluates each without error, and fires none for a healthy bridge', async () => {
    const { baseUrl } = scraping();
    const alerts = (parse(readFileSync(RULES, 'utf8')) as { groups: Array<{ rules: Array<{ alert: string }> }> }).groups
      .flatMap((group) => group.rules)
      .map((rule) => rule.alert);
    type Rule = { name: string; health: string; lastError?: string };
    const rules = async (): Promise<Rule[]> => {
      const res = await fetch(new URL('/api/v1/rules', baseUrl));
      const body = (await res.json()) as { data: { groups: Array<{ rules: Rule[] }> } };
      return body.data.groups.flatMap((group) => group.rules);
    };
    // Health is "unknown" until the first evaluation, one evaluation_interval after loading.
    await expect
      .poll(async () => (await rules()).filter((rule) => rule.health === 'unknown').map((rule) => rule.name), {
        timeout: 10_000,
      })
      .toEqual([]);
    const loaded = await rules();
    expect(loaded.map((rule) => rule.name).sort()).toEqual([...alerts].sort());
    for (const rule of loaded) expect(rule, rule.name).toMatchObject({ health: 'ok' });

    const res = await fetch(new URL('/api/v1/alerts', baseUrl));
    const active = ((await res.json()) as { data: { alerts: Array<{ labels: { alertname: string }; state: string }> } })
      .data.alerts;
    expect(active.filter((alert) => alert.state === 'firing')).toEqual([]);
  });
});

describe('exemplars', () => {
  it('Prometheus stores the trace id of a traced RPC as an exemplar of its latency bucket', async () => {
    const { baseUrl } = scraping();
    const url = new URL('/api/v1/query_exemplars', baseUrl);
    url.searchParams.set('query', `rpc_request_duration_seconds_bucket{job="${JOB}", queue="${echoQueue}"}`);
    url.searchParams.set('start', String(Math.floor(Date.now() / 1000) - 600));
    url.searchParams.set('end', String(Math.ceil(Date.now() / 1000) + 60));
    type Exemplars = Array<{
      seriesLabels: Record<string, string>;
      exemplars: Array<{ labels: { trace_id?: string } }>;
    }>;
    const read = async (): Promise<Exemplars> => {
      const body = (await (await fetch(url)).json()) as { status: string; error?: string; data?: Exemplars };
      if (body.status !== 'success') throw new Error(`Prometheus refused the exemplar query: ${body.error}`);
      return body.data ?? [];
    };
    const traceIds = async () =>
      (await read()).flatMap((series) => series.exemplars.map((exemplar) => exemplar.labels.trace_id));
    await expect.poll(traceIds, { timeout: 10_000, interval: 250 }).toContain(TRACED);
    const series = (await read()).find((found) => found.exemplars.some((e) => e.labels.trace_id === TRACED));
    expect(series?.seriesLabels).toMatchObject({ queue: echoQueue, outcome: 'ok' });
    // The id leads to a trace the bridge exported: its server span, child of the caller's span.
    await expect.poll(() => receiver.inTrace(TRACED).map((span) => span.kind)).toContain(SERVER);
  });
});

/** `--enable-feature=...` flags of the shipped compose stack's Prometheus, so that the test runs it as shipped. */
function shippedFeatureFlags(): string[] {
  const compose = parse(readFileSync(COMPOSE, 'utf8')) as { services: Record<string, { command?: string[] }> };
  return (compose.services.prometheus?.command ?? []).filter((arg) => arg.startsWith('--enable-feature='));
}

/** The Prometheus the setup started; throws the reason there is none (a missing binary names its package). */
function scraping(): RunningPrometheus {
  if (missingBinary !== undefined) throw missingBinary;
  if (prometheus === undefined) throw new Error('Prometheus is used before beforeAll has started it');
  return prometheus;
}

/** The shipped scrape config, pointed at the test's bridge, scraping and evaluating every second. */
function scrapeConfigFor(target: string): string {
  const config = parse(readFileSync(SHIPPED_CONFIG, 'utf8')) as {
    global: Record<string, string>;
    rule_files: string[];
    scrape_configs: Array<{ job_name: string; static_configs: Array<{ targets: string[] }> }>;
  };
  config.global = { ...config.global, scrape_interval: '1s', evaluation_interval: '1s' };
  config.rule_files = config.rule_files.map((file) => resolve(dirname(SHIPPED_CONFIG), file));
  const job = config.scrape_configs.find((candidate) => candidate.job_name === JOB);
  if (job === undefined) throw new Error(`${SHIPPED_CONFIG} has no scrape job named ${JOB}`);
  job.static_configs = [{ targets: [target] }];
  return stringify(config);
}

/** The `prometheus` binary on a free loopback port, ready to answer queries when this resolves. */
async function startPrometheus(
  configFile: string,
  dataDir: string,
  flags: readonly string[],
): Promise<RunningPrometheus> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const child = spawn(
      'prometheus',
      [
        `--config.file=${configFile}`,
        `--storage.tsdb.path=${dataDir}`,
        `--web.listen-address=127.0.0.1:${port}`,
        ...flags,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let output = '';
    const append = (chunk: Buffer) => {
      output += chunk.toString('utf8');
    };
    child.stdout?.on('data', append);
    child.stderr?.on('data', append);
    let exitCode: number | null | undefined;
    const exited = new Promise<void>((done) => {
      child.once('exit', (code) => {
        exitCode = code;
        done();
      });
      child.once('error', (err) => {
        output += `${err.message}\n`;
        exitCode = null;
        done();
      });
    });
    const baseUrl = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 30_000;
    while (exitCode === undefined && Date.now() < deadline) {
      const ready = await fetch(`${baseUrl}/-/ready`).then(
        (res) => res.ok,
        () => false,
      );
      if (ready) return { baseUrl, output: () => output, stop: () => stopProcess(child, exited) };
      await new Promise((done) => setTimeout(done, 100));
    }
    await stopProcess(child, exited);
    // Another process can take the free port between our look and Prometheus's bind.
    if (attempt < 3 && output.includes('address already in use')) continue;
    throw new Error(`prometheus was not ready (exit code ${exitCode}):\n${output}`);
  }
}

/** SIGTERM, then SIGKILL if it is still there after 10 s. */
async function stopProcess(child: ChildProcess, exited: Promise<unknown>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((done) => {
    timer = setTimeout(() => done('late'), 10_000);
  });
  if ((await Promise.race([exited, late])) === 'late') {
    child.kill('SIGKILL');
    await exited;
  }
  clearTimeout(timer);
}

async function rpc(path: string, body: string, headers: Record<string, string> = {}): Promise<number> {
  const res = await fetch(`${bridge?.baseUrl}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'text/plain', ...headers },
    body,
  });
  await res.arrayBuffer();
  return res.status;
}

/** An instant query through Prometheus's HTTP API; throws with Prometheus's error for a bad query. */
async function query(expr: string): Promise<Sample[]> {
  const url = new URL('/api/v1/query', scraping().baseUrl);
  url.searchParams.set('query', expr);
  const res = await fetch(url);
  const body = (await res.json()) as {
    status: string;
    error?: string;
    data?: { resultType: string; result: Array<{ metric: Record<string, string>; value: [number, string] }> };
  };
  if (body.status !== 'success' || body.data?.resultType !== 'vector') {
    throw new Error(`Prometheus refused ${expr}: ${body.error ?? JSON.stringify(body)}`);
  }
  return body.data.result.map((sample) => ({ labels: sample.metric, value: Number(sample.value[1]) }));
}

/** The value of a query that selects one series; undefined while it selects none. */
async function scalar(expr: string): Promise<number | undefined> {
  const samples = await query(expr);
  if (samples.length > 1) throw new Error(`${expr} selects ${samples.length} series, not one`);
  return samples[0]?.value;
}

/** Scrapes happen every second: a value the bridge already has reaches Prometheus shortly. */
async function expectSoon(expr: string, expected: number): Promise<void> {
  await expect.poll(() => scalar(expr), { timeout: 10_000, interval: 250, message: expr }).toBe(expected);
}

/** For the setup: waits for a query to reach a value, and says what it saw and what Prometheus logged if not. */
async function settle(read: () => Promise<number | undefined>, expected: number, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  let last: number | undefined;
  while (Date.now() < deadline) {
    last = await read();
    if (last === expected) return;
    await new Promise((done) => setTimeout(done, 250));
  }
  throw new Error(`timed out waiting for ${what}: saw ${last}, expected ${expected}\n${prometheus?.output() ?? ''}`);
}
