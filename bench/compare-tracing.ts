/**
 * npm run bench:tracing: the bridge with tracing off beside the bridge with every request sampled
 * (OTLP to a local sink), in one run, interleaved, against one echo worker: what tracing costs, with
 * more rounds than the full bench gives it. BENCH_SECONDS (default 5), BENCH_ROUNDS (6),
 * BENCH_CONCURRENCIES (64). BENCH_RATE offers that many requests per second in all instead of as many as
 * are answered. BENCH_TRACED_ENV (JSON) adds variables to the traced bridge, e.g. another sampler.
 * Prints a table; writes nothing.
 */
import { randomBytes } from 'node:crypto';
import { runHttpLoad } from './lib/http-load.js';
import { type Child, freePort, startChild } from './lib/processes.js';
import { combine, type RunResult } from './lib/stats.js';

const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 6);
const CONCURRENCIES = (process.env.BENCH_CONCURRENCIES ?? '64').split(',').map(Number);
const RATE = process.env.BENCH_RATE === undefined ? undefined : Number(process.env.BENCH_RATE);
const TRACED_ENV = JSON.parse(process.env.BENCH_TRACED_ENV ?? '{}') as Record<string, string>;
const TSX = ['--import', 'tsx'];

async function main(): Promise<void> {
  const children: Child[] = [];
  try {
    const queue = `bench.tracing.${randomBytes(4).toString('hex')}`;
    const worker = startChild('node', ['dist/examples/echo-worker.js'], {
      AMQP_URL,
      RPC_QUEUE: queue,
      QUEUE_DURABLE: 'false',
      PREFETCH: '512',
    });
    children.push(worker);
    await worker.waitForLine(/consuming/);
    const sinkPort = await freePort();
    const sink = startChild('node', [...TSX, 'bench/targets/otlp-sink.ts'], { PORT: String(sinkPort) });
    children.push(sink);
    await sink.waitForLine(/"port"/);

    const variants: Array<[string, Record<string, string>]> = [
      ['tracing off', {}],
      [
        'every request sampled',
        {
          OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `http://127.0.0.1:${sinkPort}/v1/traces`,
          OTEL_TRACES_SAMPLER: 'always_on',
          ...TRACED_ENV,
        },
      ],
    ];
    const targets: Array<{ name: string; port: number; pid: number }> = [];
    for (const [name, env] of variants) {
      const port = await freePort();
      const child = startChild('node', ['--max-semi-space-size=4', 'dist/src/main.js'], {
        AMQP_URL,
        PORT: String(port),
        HOST: '127.0.0.1',
        ...env,
      });
      children.push(child);
      await child.waitForLine(/"msg":"listening"/);
      targets.push({ name, port, pid: child.pid });
    }
    const body = Buffer.alloc(100, 'x');
    const run = (target: (typeof targets)[number], concurrency: number, seconds = SECONDS) =>
      runHttpLoad({
        target: target.name,
        url: `http://127.0.0.1:${target.port}/rpc/${queue}`,
        pid: target.pid,
        concurrency,
        body,
        seconds,
        ...(RATE === undefined ? {} : { rate: RATE }),
      });
    for (const target of targets) await run(target, 16, 2);

    const rounds = new Map<string, RunResult[]>();
    for (let round = 1; round <= ROUNDS; round++) {
      for (const concurrency of CONCURRENCIES) {
        const order = round % 2 === 0 ? [...targets].reverse() : targets;
        for (const target of order) {
          const result = await run(target, concurrency);
          const key = `${target.name}|${concurrency}`;
          rounds.set(key, [...(rounds.get(key) ?? []), result]);
          console.error(
            `round ${round} ${target.name.padEnd(22)} c=${String(concurrency).padEnd(3)} ${result.rps.toFixed(0).padStart(6)} req/s ` +
              `p50 ${result.p50.toFixed(2)} ms p99 ${result.p99.toFixed(2)} ms cpu ${(result.cpuMsPerRequest * 1000).toFixed(0)} µs/req`,
          );
        }
      }
    }
    const lines = [
      `${ROUNDS} interleaved rounds of ${SECONDS} s, 100-byte bodies, keep-alive; CPU is the bridge process's (all its threads).`,
      '',
      '| bridge | concurrency | req/s | p50 ms | p99 ms | CPU µs/req | errors | non-2xx |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ];
    for (const concurrency of CONCURRENCIES) {
      const cpu: number[] = [];
      for (const target of targets) {
        const result = combine(rounds.get(`${target.name}|${concurrency}`) ?? []);
        cpu.push(result.cpuMsPerRequest);
        lines.push(
          `| ${target.name} | ${concurrency} | ${result.rps.toFixed(0)} | ${result.p50.toFixed(2)} | ${result.p99.toFixed(2)} | ` +
            `${(result.cpuMsPerRequest * 1000).toFixed(0)} | ${result.errors} | ${result.non2xx} |`,
        );
      }
      const [off, on] = cpu;
      if (off && on) lines.push(`| on / off | ${concurrency} | | | | ${(on / off).toFixed(2)} × | | |`);
    }
    console.log(lines.join('\n'));
  } finally {
    await Promise.all(children.map((child) => child.stop()));
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
