/**
 * npm run bench:compare -- <git revision>: the bridge as built from that revision beside the bridge as
 * built now, in one run, interleaved, against one echo worker: what a change to the hot path costs.
 *
 * The old revision is checked out in a temporary git worktree and built there with this checkout's
 * node_modules. Both bridges run with their default configuration, as `npm start` runs them.
 * BENCH_SECONDS (default 5) sets the length of one run, BENCH_ROUNDS (3) the rounds,
 * BENCH_CONCURRENCIES (1,64) and BENCH_BODIES (body sizes in bytes, 100) what is measured; each bridge
 * runs with the node flags of its own revision's `npm start`, and with MAX_BODY_BYTES raised to the
 * largest body when that is over the default. BENCH_TRACED=1 runs both with every request traced
 * (OTLP/protobuf to a local sink): what a change costs or saves with tracing on. Prints a table;
 * writes nothing.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { type Child, npmStartFlags } from './lib/processes.js';
import { measureSideBySide, type RunningBridge, startSideBridge, startTracingSink } from './lib/side-by-side.js';
import { startWorker } from './lib/targets.js';

const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONCURRENCIES = (process.env.BENCH_CONCURRENCIES ?? '1,64').split(',').map(Number);
const BODIES = (process.env.BENCH_BODIES ?? '100').split(',').map(Number);
const TRACED = process.env.BENCH_TRACED === '1';
/** MAX_BODY_BYTES's default: a bigger body needs the limit raised, the same for both builds. */
const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;

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
    children.push(await startWorker(AMQP_URL, queue));
    let tracing: Record<string, string> = {};
    if (TRACED) {
      const sink = await startTracingSink();
      children.push(sink.child);
      tracing = sink.env;
    }
    const targets: RunningBridge[] = [];
    for (const [name, dir] of [
      [`before (${commit})`, baselineDir],
      ['after (this checkout)', root],
    ] as const) {
      const largest = Math.max(...BODIES);
      const limit = largest > DEFAULT_MAX_BODY_BYTES ? { MAX_BODY_BYTES: String(largest) } : {};
      const started = await startSideBridge(
        name,
        join(dir, 'dist/src/main.js'),
        { AMQP_URL, ...limit, ...tracing },
        npmStartFlags(dir),
      );
      children.push(started.child);
      targets.push(started.bridge);
    }
    console.log(
      await measureSideBySide(targets as [RunningBridge, RunningBridge], {
        queue,
        seconds: SECONDS,
        rounds: ROUNDS,
        concurrencies: CONCURRENCIES,
        bodies: BODIES,
        column: 'build',
      }),
    );
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
