/**
 * Concurrency above 1: autocannon with `concurrency` keep-alive connections, in a process of its own
 * so that the parent's event loop (and anything it reads) stays out of the measurement. Its own
 * histogram rounds to whole milliseconds, too coarse here, so latencies come from its per-response
 * event (fractional ms). Run by lib/load.ts; see client-env.ts.
 */
import autocannon from 'autocannon';
import { makeBody } from '../lib/bodies.js';
import { LatencyRecorder } from '../lib/stats.js';
import { readClientEnv, report } from './client-env.js';

const env = readClientEnv(process.env);
const { body, contentType } = makeBody(env.bodyBytes, env.bodyKind);

function load(seconds: number, latencies: LatencyRecorder | undefined) {
  const instance = autocannon({
    url: env.url.href,
    method: 'POST',
    body,
    headers: { 'content-type': contentType },
    connections: env.concurrency,
    duration: seconds,
  });
  if (latencies) {
    (instance as unknown as NodeJS.EventEmitter).on(
      'response',
      (_client: unknown, _status: number, _bytes: number, responseTime: number) => latencies.record(responseTime),
    );
  }
  return instance;
}

if (env.warmupSeconds > 0) await load(env.warmupSeconds, undefined);
const latencies = new LatencyRecorder();
report({ measuring: true });
const result = await load(env.seconds, latencies);
const summary = latencies.summary();
report({
  requests: result.requests.total,
  seconds: result.duration,
  p50: summary.p50,
  p90: summary.p90,
  p99: summary.p99,
  max: summary.max,
  errors: result.errors + result.timeouts,
  non2xx: result.non2xx,
});
