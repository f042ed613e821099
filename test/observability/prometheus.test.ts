import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
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
/**
 * The asynchronous call, the keyed request and its retry, and the streams go to a queue of their own, so
 * that the echo queue's counts stay exact: four of them end `ok` (the keyed two, the stream, the plain
 * answer of a streaming worker), and the asynchronous call `deferred`.
 */
const callsQueue = uniqueName('scraped-calls');
const callsOk = 4;
const idempotencyKey = `scraped-${randomBytes(8).toString('hex')}`;
/** The echo worker's replies to a streamed request: all but the last are partial (`x-stream: more`). */
const STREAM_PIECES = 3;
const okCount = `rpc_request_duration_seconds_count{job="${JOB}", queue="${echoQueue}", outcome="ok"}`;
/** The caller's trace of the last RPC before a scrape: the exemplar Prometheus must then hold. */
const TRACED = '7aced0000000000000000000000000ff';

let dir: string | undefined;
let broker: TestBroker | undefined;
let worker: RunningWorker | undefined;
let callsWorker: RunningWorker | undefined;
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
  callsWorker = await startEchoWorker({ url: AMQP_URL, queue: callsQueue, durable: false });
  await broker.channel.assertQueue(silentQueue, { durable: false, expires: 60_000 });
  const endpoint = await receiver.start();
  bridge = await startBridgeProcess({
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_BSP_SCHEDULE_DELAY: '50',
    // The asynchronous call's and the key's queues on the broker expire a minute after their deadline.
    ASYNC_RESULT_TTL_MS: '60000',
    IDEMPOTENCY_TTL_MS: '60000',
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

  // An asynchronous call the worker answers after the 202, read with a long-poll.
  const calls = `/rpc/${callsQueue}?timeout=10000`;
  const started = await send(calls, {
    body: 'later',
    headers: { Prefer: 'respond-async', 'Amqp-Header-Delay-Ms': '300' },
  });
  expect(started.status).toBe(202);
  const location = started.headers.get('location') ?? '';
  expect(location).toMatch(/^\/calls\//);
  expect(await send(location, { method: 'GET', headers: { Prefer: 'wait=5' } })).toMatchObject({
    status: 200,
    body: 'later',
  });
  // A request with an Idempotency-Key, and its retry: answered with the first one's answer.
  const keyed = { 'Idempotency-Key': idempotencyKey };
  const once = await send(calls, { body: 'once', headers: keyed });
  expect(once).toMatchObject({ status: 200, body: 'once' });
  expect(once.headers.get('idempotent-replayed')).toBeNull();
  const retried = await send(calls, { body: 'once', headers: keyed });
  expect(retried).toMatchObject({ status: 200, body: 'once' });
  expect(retried.headers.get('idempotent-replayed')).toBe('true');
  // A stream of the worker's replies, one event each; and the same worker's answer to a caller who did not
  // ask for a stream, which drops the partial replies.
  const pieces = { 'Amqp-Header-Stream-Pieces': String(STREAM_PIECES) };
  const streamed = await send(`/rpc/${callsQueue}`, {
    body: 'piece',
    headers: { ...pieces, Accept: 'text/event-stream' },
  });
  expect(streamed.status).toBe(200);
  expect(streamed.body.match(/^event: .*$/gm)).toEqual([
    ...Array<string>(STREAM_PIECES - 1).fill('event: part'),
    'event: final',
  ]);
  expect(await send(`/rpc/${callsQueue}`, { body: 'piece', headers: pieces })).toMatchObject({
    status: 200,
    body: 'piece',
  });
  await settle(() => scalar(`rpc_stream_events_total{job="${JOB}"}`), STREAM_PIECES, 'Prometheus to see the stream');
});

afterAll(async () => {
  await prometheus?.stop();
  if (bridge !== undefined) await stopProcess(bridge.child, bridge.exited);
  await broker?.channel.deleteQueue(silentQueue).catch(() => undefined);
  await worker?.close();
  await callsWorker?.close();
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
    const answered = okBodies.length + callsOk;
    await expectSoon(`${http}{${job}, method="POST", route="/rpc/:queue", status_code="200"}`, answered);
    await expectSoon(`${http}{${job}, method="POST", route="/rpc/:queue", status_code="504"}`, 1);
    await expectSoon(`${http}{${job}, method="POST", route="/rpc/:queue", status_code="404"}`, 1);
  });

  it('counts the asynchronous call, the keyed request and its retry, and the streams, exactly as sent', async () => {
    scraping();
    const job = `job="${JOB}"`;
    const count = 'rpc_request_duration_seconds_count';
    await expectSoon(`${count}{${job}, queue="${callsQueue}", outcome="deferred"}`, 1);
    await expectSoon(`${count}{${job}, queue="${callsQueue}", outcome="ok"}`, callsOk);
    await expectSoon(`sum(${count}{${job}, queue="${callsQueue}"})`, callsOk + 1);
    // Each counter has the one series the traffic made, with its count: no other result.
    await expectSoon(`rpc_async_calls_total{${job}, result="deferred"}`, 1);
    await expectSoon(`sum(rpc_async_calls_total{${job}})`, 1);
    await expectSoon(`rpc_call_lookups_total{${job}, result="reply"}`, 1);
    await expectSoon(`sum(rpc_call_lookups_total{${job}})`, 1);
    await expectSoon(`rpc_idempotent_requests_total{${job}, result="first"}`, 1);
    await expectSoon(`rpc_idempotent_requests_total{${job}, result="replayed"}`, 1);
    await expectSoon(`sum(rpc_idempotent_requests_total{${job}})`, 2);
    await expectSoon(`rpc_streams_total{${job}, ended="final"}`, 1);
    await expectSoon(`sum(rpc_streams_total{${job}})`, 1);
    await expectSoon(`rpc_stream_events_total{${job}}`, STREAM_PIECES);
    // Only the plain caller's partial replies: the streamed ones went out as events.
    await expectSoon(`rpc_stream_parts_skipped_total{${job}}`, STREAM_PIECES - 1);
    const http = 'http_request_duration_seconds_count';
    await expectSoon(`${http}{${job}, method="POST", route="/rpc/:queue", status_code="202"}`, 1);
    await expectSoon(`${http}{${job}, method="GET", route="/calls/:id", status_code="200"}`, 1);
  });

  it('sees the broker connection as it is, nothing in flight, and the calls it keeps', async () => {
    scraping();
    await expectSoon(`amqp_connected{job="${JOB}"}`, 1);
    await expectSoon(`amqp_connection_blocked{job="${JOB}"}`, 0);
    await expectSoon(`rpc_in_flight{job="${JOB}"}`, 0);
    // The asynchronous call and the key stay counted until the broker lets their queues expire.
    await expectSoon(`rpc_calls_held{job="${JOB}"}`, 2);
    await expectSoon(`rpc_calls_waiting{job="${JOB}"}`, 0);
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
  return (await send(path, { body, headers })).status;
}

interface Answer {
  readonly status: number;
  readonly headers: Headers;
  readonly body: string;
}

/** A request to the bridge (a POST of text, unless a GET), with its answer read whole. */
async function send(
  path: string,
  { method = 'POST', body, headers = {} }: { method?: 'GET' | 'POST'; body?: string; headers?: Record<string, string> },
): Promise<Answer> {
  const res = await fetch(`${bridge?.baseUrl}${path}`, {
    method,
    headers: method === 'POST' ? { 'Content-Type': 'text/plain', ...headers } : headers,
    ...(body === undefined ? {} : { body }),
  });
  return { status: res.status, headers: res.headers, body: await res.text() };
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
