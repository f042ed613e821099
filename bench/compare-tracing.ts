/**
 * npm run bench:tracing: the bridge with tracing off beside the bridge with every request sampled
 * (OTLP to a local sink), in one run, interleaved, against one echo worker: what tracing costs, with
 * more rounds than the full bench gives it. BENCH_SECONDS (default 5), BENCH_ROUNDS (6),
 * BENCH_CONCURRENCIES (64). BENCH_RATE offers that many requests per second in all instead of as many as
 * are answered. BENCH_TRACED_ENV (JSON) adds variables to the traced bridge, e.g. another sampler.
 * Prints a table; writes nothing.
 */
import { randomBytes } from 'node:crypto';
import type { Child } from './lib/processes.js';
import { measureSideBySide, type RunningBridge, startSideBridge, startTracingSink } from './lib/side-by-side.js';
import { startWorker } from './lib/targets.js';

const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 6);
const CONCURRENCIES = (process.env.BENCH_CONCURRENCIES ?? '64').split(',').map(Number);
const RATE = process.env.BENCH_RATE === undefined ? undefined : Number(process.env.BENCH_RATE);
const TRACED_ENV = JSON.parse(process.env.BENCH_TRACED_ENV ?? '{}') as Record<string, string>;

async function main(): Promise<void> {
  const children: Child[] = [];
  try {
    const queue = `bench.tracing.${randomBytes(4).toString('hex')}`;
    children.push(await startWorker(AMQP_URL, queue));
    const sink = await startTracingSink();
    children.push(sink.child);
    const targets: RunningBridge[] = [];
    for (const [name, env] of [
      ['tracing off', {}],
      ['every request sampled', { ...sink.env, ...TRACED_ENV }],
    ] as const) {
      const started = await startSideBridge(name, 'dist/src/main.js', { AMQP_URL, ...env });
      children.push(started.child);
      targets.push(started.bridge);
    }
    console.log(
      await measureSideBySide(targets as [RunningBridge, RunningBridge], {
        queue,
        seconds: SECONDS,
        rounds: ROUNDS,
        concurrencies: CONCURRENCIES,
        rate: RATE,
        column: 'bridge',
      }),
    );
  } finally {
    await Promise.all(children.map((child) => child.stop()));
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
