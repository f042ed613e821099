/**
 * Concurrency 1 as a sidecar calls: one keep-alive connection, one request after another, in a
 * process that does nothing else. Latency is taken from just before the request is written to the
 * end of its response, with the monotonic clock, into an array allocated before the run (no
 * allocation or I/O of our own between requests). Run by lib/load.ts; see client-env.ts.
 */
import { Agent, request } from 'node:http';
import type { Socket } from 'node:net';
import { makeBody } from '../lib/bodies.js';
import { percentile } from '../lib/stats.js';
import { readClientEnv, report } from './client-env.js';

const env = readClientEnv(process.env);
const { body, contentType } = makeBody(env.bodyBytes, env.bodyKind);
const agent = new Agent({ keepAlive: true, maxSockets: 1 });
/** Sockets the requests went out on since counting began: one, if keep-alive held. */
let sockets = new WeakSet<Socket>();
let connections = 0;
const headers = { 'content-type': contentType, 'content-length': String(body.length) };

interface Answer {
  readonly status: number;
  readonly echoed: boolean;
}

function call(): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: env.url.hostname, port: env.url.port, path: env.url.pathname, method: 'POST', agent, headers },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, echoed: Buffer.concat(chunks).equals(body) }));
        res.on('error', reject);
      },
    );
    req.on('socket', (socket) => {
      if (sockets.has(socket)) return;
      sockets.add(socket);
      connections += 1;
    });
    req.on('error', reject);
    req.end(body);
  });
}

const warmupUntil = performance.now() + env.warmupSeconds * 1000;
while (performance.now() < warmupUntil) await call();

// Room for far more requests than one connection can carry; the run stops early if it fills.
const latencies = new Float64Array(Math.ceil(env.seconds * 50_000) + 1);
let count = 0;
let errors = 0;
let wrong = 0;
sockets = new WeakSet<Socket>();
connections = 0;
report({ measuring: true });
const started = performance.now();
const until = started + env.seconds * 1000;
while (performance.now() < until && count < latencies.length) {
  const before = process.hrtime.bigint();
  try {
    const answer = await call();
    latencies[count++] = Number(process.hrtime.bigint() - before) / 1e6;
    if (answer.status < 200 || answer.status > 299 || !answer.echoed) wrong += 1;
  } catch {
    errors += 1;
  }
}
const elapsed = (performance.now() - started) / 1000;
const sorted = latencies.subarray(0, count).sort();
report({
  requests: count,
  seconds: elapsed,
  p50: percentile(sorted, 0.5),
  p90: percentile(sorted, 0.9),
  p99: percentile(sorted, 0.99),
  max: sorted[count - 1] ?? 0,
  errors,
  non2xx: wrong,
  connections,
});
agent.destroy();
