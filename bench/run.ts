/**
 * npm run bench: the bridge beside its own two halves, the least bridge possible, and a peer, in one
 * run, on this machine.
 *
 * Each target (lib/targets.ts) is started for its rows and stopped after them, so that only the
 * target under test runs; rounds are interleaved and alternate their order (A B C, C B A) so that
 * drift hits all alike; each figure is the median of the rounds (every round is kept in the JSON). Concurrency 1 is measured the way a
 * sidecar calls (clients/serial-client.ts), higher concurrencies with autocannon, both from a
 * process of their own. Prints a table; a full run writes bench/results/<date>.json and latest.json
 * (both ignored by git: bench/results/README.md says which runs are committed) and refreshes the
 * benchmark block in docs/performance.md (`npm run bench:render` redoes that from a saved run).
 *
 *   --quick                a smoke run (< 1 minute): one short round at concurrency 1 and 64, nothing written
 *   BENCH_SECONDS          length of one measured row (default 3; quick 1)
 *   BENCH_ROUNDS           rounds (default 3; quick 1)
 *   BENCH_WARMUP_SECONDS   warm-up before each row, at the row's concurrency (default 1; quick 0.5)
 *   BENCH_JIT_WARMUP_SECONDS load at concurrency 32 on each target just started, before its rows
 *                          (default 3; quick 1): until V8 has compiled its hot paths, a target spends
 *                          its CPU on compiling them, which is not what a long-running one costs
 *   BENCH_TARGETS          only these targets (comma-separated names); a partial run writes nothing
 *   BENCH_SCENARIOS        concurrency,bodies,inflight (default all three; quick: concurrency)
 *   AMQP_URL, LAVINMQ_URL  the brokers (default RabbitMQ on 5672, LavinMQ on 5682, guest/guest)
 *   LAVINMQ_NODELAY_URL    a LavinMQ with `tcp_nodelay = true` in its lavinmq.ini: adds bridge-lavinmq-nodelay
 *   BENCH_BRIDGE_NODE_FLAGS the bridge's node flags (default: those of `npm start`, read from package.json)
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { LARGEST_BODY_BYTES } from './lib/bodies.js';
import { describeHost } from './lib/host-info.js';
import { type InFlightResult, runInFlight } from './lib/in-flight.js';
import { npmStartFlags } from './lib/processes.js';
import { type BenchRun, buildReport, computeRatios, updateReadme } from './lib/report.js';
import { combineByMedian, type RunResult } from './lib/stats.js';
import {
  type RunningTarget,
  startBridge,
  startWorker,
  TARGETS,
  type Target,
  type TargetContext,
} from './lib/targets.js';

const quick = process.argv.includes('--quick');
const SECONDS = Number(process.env.BENCH_SECONDS ?? (quick ? 1 : 3));
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? (quick ? 1 : 3));
const WARMUP_SECONDS = Number(process.env.BENCH_WARMUP_SECONDS ?? (quick ? 0.5 : 1));
const JIT_WARMUP_SECONDS = Number(process.env.BENCH_JIT_WARMUP_SECONDS ?? (quick ? 1 : 3));
const SCENARIOS = new Set(
  (process.env.BENCH_SCENARIOS ?? (quick ? 'concurrency' : 'concurrency,bodies,inflight')).split(','),
);
const ONLY = process.env.BENCH_TARGETS?.split(',');
const IN_FLIGHT = Number(process.env.BENCH_IN_FLIGHT ?? 10_000);
/**
 * How long the slow worker holds each request. Long enough that all IN_FLIGHT requests are open at
 * once: on 2 cores the bridge takes a few seconds to accept, read and publish 10,000 of them.
 */
const IN_FLIGHT_DELAY_MS = Number(process.env.BENCH_IN_FLIGHT_DELAY_MS ?? 8_000);
/** Every concurrency for the bridge and what it is compared with; the two the targets are judged at for the rest. */
const ALL_CONCURRENCIES = quick ? [1, 64] : [1, 16, 64, 256];
const JUDGED_CONCURRENCIES = [1, 64];
const FULLY_MEASURED = new Set(['express-echo', 'bridge', 'minimal', 'raw-amqp']);
/**
 * Larger bodies at concurrency 16 for the bridge, its two halves and the floor; and the largest at
 * concurrency 1, where the peak RSS of the row is recorded: what one request in flight costs in memory.
 */
const BODY_SIZES = [10 * 1024, 1024 * 1024];
const BODY_TARGETS = new Set(['express-echo', 'bridge', 'minimal', 'raw-amqp']);
const LOGGING =
  'on, at the default level (one line per request), each bridge appending to a file of its own in the ' +
  "OS temp folder through its own fd 1, as a deployment's log file; nothing is piped to the harness";

interface Row {
  readonly concurrency: number;
  readonly bodyBytes: number;
  readonly memory?: boolean;
}

function rowsOf(target: Target): Row[] {
  const rows: Row[] = [];
  if (SCENARIOS.has('concurrency')) {
    const concurrencies = FULLY_MEASURED.has(target.name) ? ALL_CONCURRENCIES : JUDGED_CONCURRENCIES;
    rows.push(...concurrencies.map((concurrency) => ({ concurrency, bodyBytes: 100 })));
  }
  if (SCENARIOS.has('bodies') && BODY_TARGETS.has(target.name)) {
    // The memory row first, so that its rise in RSS is not hidden by what the 1 MiB rows left behind.
    rows.push({ concurrency: 1, bodyBytes: LARGEST_BODY_BYTES, memory: true });
    rows.push(...BODY_SIZES.map((bodyBytes) => ({ concurrency: 16, bodyBytes })));
  }
  return rows;
}

async function main(): Promise<void> {
  const started = performance.now();
  const rabbitmqUrl = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
  const lavinmqUrl = process.env.LAVINMQ_URL ?? 'amqp://guest:guest@127.0.0.1:5682';
  const lavinmqNodelayUrl = process.env.LAVINMQ_NODELAY_URL;
  const logDir = mkdtempSync(join(tmpdir(), 'bridge-bench-logs-'));
  const context: TargetContext = {
    rabbitmqUrl,
    lavinmqUrl,
    ...(lavinmqNodelayUrl !== undefined && { lavinmqNodelayUrl }),
    runId: randomBytes(4).toString('hex'),
    logDir,
    warmupSeconds: WARMUP_SECONDS,
    bridgeNodeFlags: process.env.BENCH_BRIDGE_NODE_FLAGS?.split(' ').filter(Boolean) ?? npmStartFlags('.'),
  };
  const host = await describeHost({
    rabbitmq: rabbitmqUrl,
    lavinmq: lavinmqUrl,
    ...(lavinmqNodelayUrl !== undefined && { 'lavinmq-nodelay': lavinmqNodelayUrl }),
  });
  const selected = TARGETS.filter(
    (target) =>
      (ONLY === undefined || ONLY.includes(target.name)) &&
      (target.name !== 'bridge-lavinmq-nodelay' || lavinmqNodelayUrl !== undefined),
  );
  // A broker that is not there would fail its targets minutes into the run: say so now.
  const missing = selected.filter((target) => host.brokers[target.broker ?? '']?.startsWith('unreachable'));
  if (missing.length > 0) {
    const brokers = [...new Set(missing.map((target) => target.broker as string))];
    const why = brokers.map((broker) => `${broker} ${host.brokers[broker]}`).join('; ');
    // A full run refreshes docs/performance.md: all of it or nothing. A quick or partial one goes on without them.
    if (ONLY === undefined && !quick) {
      console.error(
        `bench: ${why}. Start it (a LavinMQ on 127.0.0.1:5682; beside this project's CI: ` +
          '../shared/brokers/lavinmq/lavinmq.sh start 5682), point AMQP_URL / LAVINMQ_URL at one, or leave its ' +
          'targets out with BENCH_TARGETS.',
      );
      process.exit(2);
    }
    console.error(`bench: leaving out ${missing.map((target) => target.name).join(', ')}: ${why}`);
  }
  const targets = selected.filter((target) => !missing.includes(target));
  let running: RunningTarget | undefined;
  process.on('SIGINT', () => void (running?.stop() ?? Promise.resolve()).then(() => process.exit(130)));

  const rounds = new Map<string, RunResult[]>();
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      console.error(`round ${round}/${ROUNDS}`);
      const inOrder = round % 2 === 1 ? targets : [...targets].reverse();
      for (const target of inOrder) {
        const rows = rowsOf(target);
        if (rows.length === 0) continue;
        running = await target.start(context);
        if (JIT_WARMUP_SECONDS > 0) await running.measure(32, 100, JIT_WARMUP_SECONDS);
        for (const row of rows) {
          const result = await running.measure(row.concurrency, row.bodyBytes, SECONDS, row.memory);
          const key = `${result.target}|${result.concurrency}|${result.bodyBytes}`;
          rounds.set(key, [...(rounds.get(key) ?? []), result]);
          progress(result);
        }
        await running.stop();
        running = undefined;
      }
    }
    const inFlight = SCENARIOS.has('inflight') ? await measureInFlight(context) : undefined;
    const run: BenchRun = {
      date: new Date().toISOString(),
      quick,
      host,
      loadAverageAtEnd: loadavg()[0] ?? 0,
      seconds: SECONDS,
      rounds: ROUNDS,
      warmupSeconds: WARMUP_SECONDS,
      jitWarmupSeconds: JIT_WARMUP_SECONDS,
      logging: LOGGING,
      tookSeconds: (performance.now() - started) / 1000,
      targets: targets.map(({ name, description }) => ({ name, description })),
      aggregate: 'median',
      results: [...rounds.values()].map(combineByMedian),
      roundResults: [...rounds.values()].flat(),
      ...(inFlight && { inFlight }),
    };
    const report = buildReport(run);
    console.log(report.table);
    console.error(`bench took ${run.tookSeconds.toFixed(0)} s`);
    save(run, report.markdown);
  } finally {
    await running?.stop();
    reportLogs(logDir);
  }
}

/** A full run is kept and shown in docs/performance.md; a quick or partial one is kept only in the temp folder. */
function save(run: BenchRun, markdown: string): void {
  const json = `${JSON.stringify({ ...run, ratios: computeRatios(run) }, null, 2)}\n`;
  const complete = !quick && ONLY === undefined && SCENARIOS.size === 3;
  if (!complete) {
    const path = join(tmpdir(), 'bridge-bench-partial.json');
    writeFileSync(path, json);
    console.error(
      `a quick or partial run: docs/performance.md untouched; saved as ${path} (npm run bench:render -- ${path})`,
    );
    return;
  }
  mkdirSync('bench/results', { recursive: true });
  const path = `bench/results/${run.date.replace(/[:.]/g, '-')}.json`;
  writeFileSync(path, json);
  writeFileSync('bench/results/latest.json', json);
  updateReadme(markdown);
  console.error(`wrote ${path}, bench/results/latest.json and the benchmark block in docs/performance.md`);
}

/** A fresh bridge (its peak RSS is this scenario's alone) and a worker that holds every request. */
async function measureInFlight(context: TargetContext): Promise<InFlightResult> {
  console.error(`${IN_FLIGHT} requests in flight at once against a worker that answers after ${IN_FLIGHT_DELAY_MS} ms`);
  const queue = `bench.slow.${context.runId}`;
  const worker = await startWorker(context.rabbitmqUrl, queue, Math.min(65_535, IN_FLIGHT * 2));
  // All of them from one caller: its share (MAX_IN_FLIGHT_PER_CALLER, half of MAX_IN_FLIGHT by default)
  // would answer the second half 429 at once, and the scenario measures what 10,000 held requests cost.
  const bridge = await startBridge(context, context.rabbitmqUrl, join(context.logDir, 'bridge-in-flight.log'), {
    MAX_IN_FLIGHT_PER_CALLER: String(IN_FLIGHT),
  });
  try {
    return await runInFlight(bridge.port, bridge.child.pid, queue, IN_FLIGHT, IN_FLIGHT_DELAY_MS);
  } finally {
    await bridge.child.stop();
    await worker.stop();
  }
}

function progress(result: RunResult): void {
  console.error(
    `  ${result.target.padEnd(18)} c=${String(result.concurrency).padEnd(3)} body=${String(result.bodyBytes).padEnd(7)} ` +
      `${result.rps.toFixed(0).padStart(6)} req/s  p50 ${result.p50.toFixed(2)} ms  p99 ${result.p99.toFixed(2)} ms  ` +
      `cpu ${(result.cpuMsPerRequest * 1000).toFixed(0)} µs/req${result.errors + result.non2xx > 0 ? `  errors ${result.errors} non-2xx ${result.non2xx}` : ''}`,
  );
}

/** Says how much the bridges logged (so that a reader can see logging was on), then removes the logs. */
function reportLogs(logDir: string): void {
  let bytes = 0;
  for (const target of TARGETS) {
    try {
      bytes += statSync(join(logDir, `${target.name}.log`)).size;
    } catch {}
  }
  console.error(`the bridges wrote ${(bytes / 1024 / 1024).toFixed(1)} MiB of log lines`);
  rmSync(logDir, { recursive: true, force: true });
}

await main();
