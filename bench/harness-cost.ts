/**
 * npm run bench:harness-cost: where the old benchmark's concurrency-1 figures came from. Measures the
 * bridge (and the minimal bridge, as a control) at concurrency 1 in one sitting, switching one
 * thing at a time between the way the old harness measured and the way `npm run bench` now does:
 *
 *   client   autocannon inside the harness process (old) | autocannon in a process of its own |
 *            the serial client in a process of its own (new)
 *   logs     the bridge's stdout piped into the harness, read line by line (old) | a file (new)
 *   others   the old harness's other targets running idle beside it (two more bridges, the express
 *            echo, the minimal bridge) (old) | nothing else (new)
 *
 * Variants are interleaved over BENCH_ROUNDS rounds (default 5) of BENCH_SECONDS (default 3) each.
 * BENCH_VARIANTS picks variants by name (separated by ';'). Prints a table (medians over the rounds, and the lowest and highest round) and saves bench/results/harness-cost-<date>.json.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeHost } from './lib/host-info.js';
import { runHttpLoad } from './lib/http-load.js';
import { runLoad } from './lib/load.js';
import { type Child, freePort, startChild } from './lib/processes.js';
import { median, type RunResult } from './lib/stats.js';
import { echoQueue, startWorker, type TargetContext, waitReady } from './lib/targets.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const WARMUP_SECONDS = 1;
const TSX = ['--import', 'tsx'];

type Client = 'autocannon in the harness' | 'autocannon, own process' | 'serial, own process';

interface Variant {
  readonly name: string;
  readonly target: 'bridge' | 'minimal';
  readonly client: Client;
  readonly logs: 'piped to the harness' | 'file' | 'none';
  readonly othersRunning: boolean;
}

const VARIANTS: readonly Variant[] = [
  {
    name: 'old harness',
    target: 'bridge',
    client: 'autocannon in the harness',
    logs: 'piped to the harness',
    othersRunning: true,
  },
  {
    name: 'old, nothing else running',
    target: 'bridge',
    client: 'autocannon in the harness',
    logs: 'piped to the harness',
    othersRunning: false,
  },
  {
    name: 'old, logs to a file',
    target: 'bridge',
    client: 'autocannon in the harness',
    logs: 'file',
    othersRunning: false,
  },
  {
    name: 'autocannon in its own process',
    target: 'bridge',
    client: 'autocannon, own process',
    logs: 'file',
    othersRunning: false,
  },
  {
    name: 'serial client, logs piped',
    target: 'bridge',
    client: 'serial, own process',
    logs: 'piped to the harness',
    othersRunning: false,
  },
  { name: 'new harness', target: 'bridge', client: 'serial, own process', logs: 'file', othersRunning: false },
  {
    name: 'minimal, old harness',
    target: 'minimal',
    client: 'autocannon in the harness',
    logs: 'none',
    othersRunning: true,
  },
  {
    name: 'minimal, new harness',
    target: 'minimal',
    client: 'serial, own process',
    logs: 'none',
    othersRunning: false,
  },
];

/** Everything started and not yet stopped, so that Ctrl-C leaves nothing running. */
const live = new Set<Child>();
process.on('SIGINT', () => void Promise.all([...live].map((child) => child.stop())).then(() => process.exit(130)));

const chosen = process.env.BENCH_VARIANTS?.split(';');
const variants = VARIANTS.filter((variant) => chosen === undefined || chosen.includes(variant.name));

interface Measured extends RunResult {
  readonly variant: string;
  /** CPU the harness process itself used per request while measuring. */
  readonly harnessCpuMsPerRequest: number;
}

async function main(): Promise<void> {
  const rabbitmqUrl = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
  const logDir = mkdtempSync(join(tmpdir(), 'bridge-harness-cost-'));
  const context: TargetContext = {
    rabbitmqUrl,
    lavinmqUrl: '',
    runId: randomBytes(4).toString('hex'),
    logDir,
    warmupSeconds: WARMUP_SECONDS,
    bridgeNodeFlags: ['--max-semi-space-size=4'],
  };
  const host = await describeHost({ rabbitmq: rabbitmqUrl });
  const worker = await startWorker(rabbitmqUrl, echoQueue(context));
  live.add(worker);
  const measured = new Map<string, Measured[]>();
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      console.error(`round ${round}/${ROUNDS}`);
      const inOrder = round % 2 === 1 ? variants : [...variants].reverse();
      for (const variant of inOrder) {
        const result = await measureVariant(variant, context);
        measured.set(variant.name, [...(measured.get(variant.name) ?? []), result]);
        console.error(
          `  ${variant.name.padEnd(32)} p50 ${result.p50.toFixed(2)} ms  p99 ${result.p99.toFixed(2)} ms  ` +
            `${result.rps.toFixed(0)} req/s  target CPU ${(result.cpuMsPerRequest * 1000).toFixed(0)} µs/req`,
        );
      }
    }
  } finally {
    await worker.stop();
    rmSync(logDir, { recursive: true, force: true });
  }
  // Medians over the rounds, with their spread: on a shared machine one round can be far off.
  const rows = variants.map((variant) => {
    const runs = measured.get(variant.name) ?? [];
    const of = (pick: (run: Measured) => number) => spread(runs.map(pick));
    return {
      ...variant,
      rounds: runs,
      rps: of((run) => run.rps),
      p50: of((run) => run.p50),
      p99: of((run) => run.p99),
      targetCpuUs: of((run) => run.cpuMsPerRequest * 1000),
      harnessCpuUs: of((run) => run.harnessCpuMsPerRequest * 1000),
    };
  });
  const show = (figures: Spread, digits: number) =>
    `${figures.median.toFixed(digits)} (${figures.min.toFixed(digits)}–${figures.max.toFixed(digits)})`;
  const table = [
    '| variant | client | bridge logs | others running | req/s | p50 ms | p99 ms | target CPU µs/req | harness CPU µs/req |',
    '| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map(
      (r) =>
        `| ${r.name} | ${r.client} | ${r.logs} | ${r.othersRunning ? 'yes' : 'no'} | ${r.rps.median.toFixed(0)} | ` +
        `${show(r.p50, 2)} | ${show(r.p99, 1)} | ${r.targetCpuUs.median.toFixed(0)} | ${r.harnessCpuUs.median.toFixed(0)} |`,
    ),
  ].join('\n');
  const date = new Date().toISOString();
  console.log(
    `Measured ${date.slice(0, 16).replace('T', ' ')} UTC on ${host.cpuModel}, ${host.cores} cores, Node ${host.node}, ` +
      `${host.brokers.rabbitmq}; ${ROUNDS} interleaved rounds of ${SECONDS} s, medians (lowest–highest round); load average ` +
      `${host.loadAverageAtStart.toFixed(1)} at the start, ${(loadavg()[0] ?? 0).toFixed(1)} at the end.\n\n${table}`,
  );
  mkdirSync('bench/results', { recursive: true });
  const path = `bench/results/harness-cost-${date.replace(/[:.]/g, '-')}.json`;
  writeFileSync(path, `${JSON.stringify({ date, host, seconds: SECONDS, rounds: ROUNDS, rows }, null, 2)}\n`);
  console.error(`saved ${path}`);
}

interface Spread {
  readonly median: number;
  readonly min: number;
  readonly max: number;
}

function spread(values: readonly number[]): Spread {
  return { median: median(values), min: Math.min(...values), max: Math.max(...values) };
}

async function measureVariant(variant: Variant, context: TargetContext): Promise<Measured> {
  const started: Child[] = [];
  try {
    if (variant.othersRunning) started.push(...(await startOldNeighbours(context)));
    const { child, url } =
      variant.target === 'bridge' ? await startBridge(variant, context) : await startMinimal(context);
    started.push(child);
    for (const one of started) live.add(one);
    let harnessBefore = process.cpuUsage();
    const result = await load(variant.client, url, child.pid, () => {
      harnessBefore = process.cpuUsage();
    });
    const harness = process.cpuUsage(harnessBefore);
    return {
      ...result,
      variant: variant.name,
      harnessCpuMsPerRequest: (harness.user + harness.system) / 1000 / Math.max(1, result.requests),
    };
  } finally {
    for (const child of started) {
      await child.stop();
      live.delete(child);
    }
  }
}

/** `onMeasuring` is called once warm-up is over, to count the harness's own CPU over the measured part. */
async function load(client: Client, url: string, pid: number, onMeasuring: () => void): Promise<RunResult> {
  const body = Buffer.alloc(100, 'x');
  if (client === 'autocannon in the harness') {
    const run = (seconds: number) => runHttpLoad({ target: 'variant', url, pid, concurrency: 1, body, seconds });
    await run(WARMUP_SECONDS);
    onMeasuring();
    return run(SECONDS);
  }
  // The child clients warm up themselves.
  return runLoad({
    target: 'variant',
    url,
    cpuPid: pid,
    client: client === 'serial, own process' ? 'serial' : 'autocannon',
    concurrency: 1,
    bodyBytes: 100,
    bodyKind: 'bytes',
    warmupSeconds: WARMUP_SECONDS,
    seconds: SECONDS,
    onMeasuring,
  });
}

/** What the old harness kept running beside the bridge: two more bridges, the express echo, the minimal bridge. */
async function startOldNeighbours(context: TargetContext): Promise<Child[]> {
  const queueMode = await startBridge({ logs: 'piped to the harness' }, context, { RPC_REPLY_MODE: 'queue' });
  const noConfirms = await startBridge({ logs: 'piped to the harness' }, context, { AMQP_PUBLISHER_CONFIRMS: 'false' });
  const echo = startChild('node', [...TSX, 'bench/targets/express-echo.ts'], {});
  await echo.waitForLine(/"port"/);
  const minimal = await startMinimal(context);
  return [queueMode.child, noConfirms.child, echo, minimal.child];
}

async function startBridge(
  variant: Pick<Variant, 'logs'>,
  context: TargetContext,
  env: Record<string, string> = {},
): Promise<{ child: Child; url: string }> {
  const port = await freePort();
  const child = startChild(
    'node',
    [...context.bridgeNodeFlags, 'dist/src/main.js'],
    { AMQP_URL: context.rabbitmqUrl, PORT: String(port), HOST: '127.0.0.1', ...env },
    variant.logs === 'file' ? { stdoutFile: join(context.logDir, 'bridge.log') } : {},
  );
  await waitReady(`http://127.0.0.1:${port}/readyz`);
  return { child, url: `http://127.0.0.1:${port}/rpc/${echoQueue(context)}` };
}

async function startMinimal(context: TargetContext): Promise<{ child: Child; url: string }> {
  const port = await freePort();
  const child = startChild('node', [...TSX, 'bench/targets/minimal-bridge.ts'], {
    AMQP_URL: context.rabbitmqUrl,
    QUEUE: echoQueue(context),
    PORT: String(port),
  });
  await child.waitForLine(/"port"/);
  return { child, url: `http://127.0.0.1:${port}/rpc` };
}

await main();
