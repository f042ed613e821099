/**
 * npm run bench:compare -- <git revision>: the bridge as built from that revision beside the bridge as
 * built now, in one run, interleaved, against one echo worker: what a change to the hot path costs.
 *
 * The old revision is checked out in a temporary git worktree and built there with this checkout's
 * node_modules. Both bridges run with their default configuration, as `npm start` runs them.
 * BENCH_SECONDS (default 5) sets the length of one run, BENCH_ROUNDS (3) the rounds,
 * BENCH_CONCURRENCIES (1,64) what is measured. BENCH_TRACED=1 runs both with every request traced
 * (OTLP/protobuf to a local sink): what a change costs or saves with tracing on. Prints a table;
 * writes nothing.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { runHttpLoad } from './lib/http-load.js';
import { type Child, freePort, startChild } from './lib/processes.js';
import { combine, type RunResult } from './lib/stats.js';

const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONCURRENCIES = (process.env.BENCH_CONCURRENCIES ?? '1,64').split(',').map(Number);
const TRACED = process.env.BENCH_TRACED === '1';

async function main(): Promise<void> {
  const revision = process.argv[2];
  if (revision === undefined) throw new Error('usage: npm run bench:compare -- <git revision>');
  const commit = execFileSync('git', ['rev-parse', '--short', revision], { encoding: 'utf8' }).trim();
  const root = resolve('.');
  const baselineDir = mkdtempSync(join(tmpdir(), `bridge-baseline-${commit}-`));
  const children: Child[] = [];
  try {
    execFileSync('git', ['worktree', 'add', '--detach', baselineDir, commit], { stdio: 'ignore' });
    symlinkSync(join(root, 'node_modules'), join(baselineDir, 'node_modules'));
    execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], {
      cwd: baselineDir,
      stdio: 'inherit',
    });
    if (!existsSync(join(root, 'dist/src/main.js'))) throw new Error('build this checkout first (npm run build)');

    const queue = `bench.compare.${randomBytes(4).toString('hex')}`;
    const worker = startChild('node', ['dist/examples/echo-worker.js'], {
      AMQP_URL,
      RPC_QUEUE: queue,
      QUEUE_DURABLE: 'false',
      PREFETCH: '512',
    });
    children.push(worker);
    await worker.waitForLine(/consuming/);
    let tracing: Record<string, string> = {};
    if (TRACED) {
      const sinkPort = await freePort();
      const sink = startChild('node', ['--import', 'tsx', 'bench/targets/otlp-sink.ts'], { PORT: String(sinkPort) });
      children.push(sink);
      await sink.waitForLine(/"port"/);
      tracing = {
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `http://127.0.0.1:${sinkPort}/v1/traces`,
        OTEL_TRACES_SAMPLER: 'always_on',
      };
    }

    const targets: Array<{ name: string; port: number; pid: number }> = [];
    for (const [name, dir] of [
      [`before (${commit})`, baselineDir],
      ['after (this checkout)', root],
    ] as const) {
      const port = await freePort();
      const child = startChild('node', ['--max-semi-space-size=4', join(dir, 'dist/src/main.js')], {
        AMQP_URL,
        PORT: String(port),
        HOST: '127.0.0.1',
        ...tracing,
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
      });
    for (const target of targets) await run(target, 16, 2);

    const rounds = new Map<string, RunResult[]>();
    for (let round = 1; round <= ROUNDS; round++) {
      for (const concurrency of CONCURRENCIES) {
        // Alternate which goes first, so that drift favours neither.
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
      `${ROUNDS} interleaved rounds of ${SECONDS} s, 100-byte bodies, keep-alive; CPU is the bridge process's.`,
      '',
      '| build | concurrency | req/s | p50 ms | p99 ms | CPU µs/req | errors | non-2xx |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ];
    for (const concurrency of CONCURRENCIES) {
      for (const target of targets) {
        const result = combine(rounds.get(`${target.name}|${concurrency}`) ?? []);
        lines.push(
          `| ${target.name} | ${concurrency} | ${result.rps.toFixed(0)} | ${result.p50.toFixed(2)} | ${result.p99.toFixed(2)} | ` +
            `${(result.cpuMsPerRequest * 1000).toFixed(0)} | ${result.errors} | ${result.non2xx} |`,
        );
      }
    }
    console.log(lines.join('\n'));
  } finally {
    await Promise.all(children.map((child) => child.stop()));
    execFileSync('git', ['worktree', 'remove', '--force', baselineDir], { stdio: 'ignore' });
    rmSync(baselineDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
