/**
 * npm run bench: the bridge beside its own two halves, in one run, on this machine.
 *
 *   express-echo  a plain express 5 echo server (the HTTP half alone)
 *   bridge        the built bridge, default configuration, logging on (to /dev/null)
 *   raw-amqp      a raw amqplib direct reply-to client, no HTTP (the AMQP half alone)
 *   minimal       the floor: node:http + amqplib and nothing else (no validation, logs, metrics)
 *
 * All three share one echo worker and one broker. Runs are interleaved (A B C A B C) so drift hits
 * all alike; each figure is the mean of the rounds. Prints a table, writes bench/results/*.json and
 * refreshes the README's benchmark section. BENCH_SECONDS (default 3) sets the length of one run,
 * BENCH_ROUNDS (2) the rounds, BENCH_SCENARIOS (concurrency,bodies,inflight) what runs, and
 * BENCH_BRIDGE_NODE_FLAGS extra node flags for the bridge (for tuning experiments).
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { cpus } from 'node:os';
import { runHttpLoad } from './lib/http-load.js';
import { type Child, freePort, peakRssBytes, startChild } from './lib/processes.js';
import { combine, type RunResult } from './lib/stats.js';

const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const CONCURRENCIES = [1, 16, 64, 256];
const BODY_SIZES = [100, 10 * 1024, 1024 * 1024];
const IN_FLIGHT = Number(process.env.BENCH_IN_FLIGHT ?? 10_000);
/**
 * How long the slow worker holds each request. Long enough that all IN_FLIGHT requests are open at
 * once: on 2 cores the bridge takes a few seconds to accept, read and publish 10,000 of them.
 */
const IN_FLIGHT_DELAY_MS = Number(process.env.BENCH_IN_FLIGHT_DELAY_MS ?? 8_000);
const SCENARIOS = new Set((process.env.BENCH_SCENARIOS ?? 'concurrency,bodies,inflight').split(','));
const TSX = ['--import', 'tsx'];
const runId = randomBytes(4).toString('hex');
const echoQueue = `bench.echo.${runId}`;
const slowQueue = `bench.slow.${runId}`;

interface InFlightResult {
  readonly requests: number;
  readonly ok: number;
  readonly wrong: number;
  readonly byStatus: Record<string, number>;
  readonly seconds: number;
  readonly peakRssMb: number;
  readonly peakHeapMb: number;
  /** The most RPCs the bridge reported in flight at once (sampled every 200 ms). */
  readonly peakInFlight: number;
  readonly inFlightAfter: number;
}

const benchStarted = performance.now();

async function main(): Promise<void> {
  const children: Child[] = [];
  const stopAll = async () => {
    await Promise.all(children.map((child) => child.stop()));
  };
  process.on('SIGINT', () => void stopAll().then(() => process.exit(130)));
  try {
    const worker = startChild('node', ['dist/examples/echo-worker.js'], {
      AMQP_URL,
      RPC_QUEUE: echoQueue,
      QUEUE_DURABLE: 'false',
      PREFETCH: '512',
    });
    children.push(worker);
    await worker.waitForLine(/consuming/);

    const { child: bridge, port: bridgePort } = await startBridge();
    // The same bridge in its other configurations, to show what each costs.
    const queueMode = await startBridge({ RPC_REPLY_MODE: 'queue' });
    const noConfirms = await startBridge({ AMQP_PUBLISHER_CONFIRMS: 'false' });
    children.push(queueMode.child, noConfirms.child);
    children.push(bridge);

    const echo = startChild('node', [...TSX, 'bench/targets/express-echo.ts'], {});
    children.push(echo);
    const echoPort = (JSON.parse(await echo.waitForLine(/"port"/)) as { port: number }).port;
    const minimal = startChild('node', [...TSX, 'bench/targets/minimal-bridge.ts'], { AMQP_URL, QUEUE: echoQueue });
    children.push(minimal);
    const minimalPort = (JSON.parse(await minimal.waitForLine(/"port"/)) as { port: number }).port;

    const httpTarget =
      (target: string, port: number, pid: number, path: string) => (concurrency: number, body: Buffer) =>
        runHttpLoad({ target, url: `http://127.0.0.1:${port}${path}`, pid, concurrency, body, seconds: SECONDS });
    const rpcPath = `/rpc/${echoQueue}`;
    const targets = {
      'express-echo': httpTarget('express-echo', echoPort, echo.pid, '/echo'),
      bridge: httpTarget('bridge', bridgePort, bridge.pid, rpcPath),
      'raw-amqp': (concurrency: number, body: Buffer) => runRawAmqp(concurrency, body.length),
      'bridge-queue-mode': httpTarget('bridge-queue-mode', queueMode.port, queueMode.child.pid, rpcPath),
      'bridge-no-confirms': httpTarget('bridge-no-confirms', noConfirms.port, noConfirms.child.pid, rpcPath),
      minimal: httpTarget('minimal', minimalPort, minimal.pid, '/rpc'),
    };

    console.error(`warming up (${Object.keys(targets).join(', ')})`);
    for (const run of Object.values(targets)) await run(16, Buffer.alloc(100, 'w'));

    const rounds = new Map<string, RunResult[]>();
    const keep = (result: RunResult) => {
      const key = `${result.target}|${result.concurrency}|${result.bodyBytes}`;
      rounds.set(key, [...(rounds.get(key) ?? []), result]);
      console.error(
        `  ${result.target.padEnd(12)} c=${String(result.concurrency).padEnd(3)} body=${String(result.bodyBytes).padEnd(7)} ` +
          `${result.rps.toFixed(0).padStart(6)} req/s  p50 ${result.p50.toFixed(2)} ms  p99 ${result.p99.toFixed(2)} ms  ` +
          `cpu ${(result.cpuMsPerRequest * 1000).toFixed(0)} µs/req`,
      );
    };
    const body100 = Buffer.alloc(100, 'x');
    for (let round = 1; round <= ROUNDS; round++) {
      if (SCENARIOS.has('concurrency')) {
        console.error(`round ${round}/${ROUNDS}: concurrency`);
        for (const concurrency of CONCURRENCIES) {
          for (const [name, run] of Object.entries(targets)) {
            // The configuration variants at the two concurrencies the targets are judged at.
            if (name.startsWith('bridge-') && concurrency !== 1 && concurrency !== 64) continue;
            keep(await run(concurrency, body100));
          }
        }
      }
      if (!SCENARIOS.has('bodies')) continue;
      console.error(`round ${round}/${ROUNDS}: body sizes at concurrency 16`);
      for (const size of BODY_SIZES.filter((bytes) => bytes !== 100)) {
        const body = randomBytes(size);
        keep(await targets['express-echo'](16, body));
        keep(await targets.bridge(16, body));
      }
    }
    const results = [...rounds.values()].map(combine);

    if (!SCENARIOS.has('inflight')) {
      console.log(buildReport(results, undefined).table);
      return;
    }
    console.error(
      `${IN_FLIGHT} requests in flight at once against a worker that answers after ${IN_FLIGHT_DELAY_MS} ms`,
    );
    const slow = startChild('node', ['dist/examples/echo-worker.js'], {
      AMQP_URL,
      RPC_QUEUE: slowQueue,
      QUEUE_DURABLE: 'false',
      PREFETCH: String(Math.min(65_535, IN_FLIGHT * 2)),
    });
    children.push(slow);
    await slow.waitForLine(/consuming/);
    // A fresh bridge, so that its peak RSS is this scenario's and not the 1 MiB bodies' before it.
    await bridge.stop();
    const fresh = await startBridge();
    children.push(fresh.child);
    const inFlight = await runInFlight(fresh.port, fresh.child.pid);

    const report = buildReport(results, inFlight);
    console.error(`bench took ${((performance.now() - benchStarted) / 1000).toFixed(0)} s`);
    console.log(report.table);
    if (SCENARIOS.size < 3) {
      console.error('a partial run (BENCH_SCENARIOS): results printed, nothing written');
      return;
    }
    mkdirSync('bench/results', { recursive: true });
    const json = JSON.stringify(
      {
        date: new Date().toISOString(),
        cpus: cpus().length,
        cpuModel: cpus()[0]?.model,
        seconds: SECONDS,
        rounds: ROUNDS,
        results,
        inFlight,
        ratios: report.ratios,
      },
      null,
      2,
    );
    writeFileSync(`bench/results/${new Date().toISOString().replace(/[:.]/g, '-')}.json`, json);
    writeFileSync('bench/results/latest.json', json);
    updateReadme(report.markdown);
    console.error('wrote bench/results/latest.json and the README benchmark section');
  } finally {
    await stopAll();
  }
}

async function startBridge(env: Record<string, string> = {}): Promise<{ child: Child; port: number }> {
  const port = await freePort();
  // As `npm start` and the Dockerfile run it, unless BENCH_BRIDGE_NODE_FLAGS says otherwise.
  const flags = (process.env.BENCH_BRIDGE_NODE_FLAGS ?? '--max-semi-space-size=4').split(' ').filter(Boolean);
  const child = startChild('node', [...flags, 'dist/src/main.js'], {
    AMQP_URL,
    PORT: String(port),
    HOST: '127.0.0.1',
    ...env,
  });
  await child.waitForLine(/"msg":"listening"/);
  await waitReady(`http://127.0.0.1:${port}/readyz`);
  return { child, port };
}

async function runRawAmqp(concurrency: number, bodyBytes: number): Promise<RunResult> {
  const child = startChild('node', [...TSX, 'bench/targets/raw-amqp-rpc.ts'], {
    AMQP_URL,
    QUEUE: echoQueue,
    CONCURRENCY: String(concurrency),
    SECONDS: String(SECONDS),
    BODY_BYTES: String(bodyBytes),
  });
  const line = await child.waitForLine(/"requests"/, (SECONDS + 20) * 1000);
  await child.stop();
  const raw = JSON.parse(line) as Omit<RunResult, 'target' | 'concurrency' | 'bodyBytes' | 'errors' | 'non2xx'>;
  return { ...raw, target: 'raw-amqp', concurrency, bodyBytes, errors: 0, non2xx: 0 };
}

/** Opens IN_FLIGHT requests (in batches the listen queue can take) that the worker holds for a while. */
async function runInFlight(port: number, pid: number): Promise<InFlightResult> {
  const agent = new Agent({ keepAlive: false, maxSockets: Number.POSITIVE_INFINITY });
  const byStatus: Record<string, number> = {};
  let ok = 0;
  let wrong = 0;
  let peakHeap = 0;
  let peakInFlight = 0;
  const heapPoll = setInterval(() => {
    void scrape(port, 'nodejs_heap_size_used_bytes').then((heap) => {
      peakHeap = Math.max(peakHeap, heap);
    });
    void scrape(port, 'rpc_in_flight').then((count) => {
      peakInFlight = Math.max(peakInFlight, count);
    });
  }, 200);
  const started = performance.now();
  const pending: Array<Promise<void>> = [];
  for (let i = 0; i < IN_FLIGHT; i++) {
    // 250 new connections every 100 ms: faster, and this 2-core machine overflows the listen queue.
    if (i > 0 && i % 250 === 0) await new Promise((resolve) => setTimeout(resolve, 100));
    const expected = `in-flight-${i}`;
    pending.push(
      new Promise<void>((resolve) => {
        const req = httpRequest(
          {
            host: '127.0.0.1',
            port,
            path: `/rpc/${slowQueue}`,
            method: 'POST',
            agent,
            headers: { 'Amqp-Header-Delay-Ms': String(IN_FLIGHT_DELAY_MS), 'Amqp-Timeout': '60000' },
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (chunk: Buffer) => chunks.push(chunk));
            res.on('end', () => {
              const status = String(res.statusCode);
              byStatus[status] = (byStatus[status] ?? 0) + 1;
              if (res.statusCode === 200 && Buffer.concat(chunks).toString() === expected) ok += 1;
              else wrong += 1;
              resolve();
            });
          },
        );
        req.on('error', () => {
          byStatus.error = (byStatus.error ?? 0) + 1;
          wrong += 1;
          resolve();
        });
        req.end(expected);
      }),
    );
  }
  await Promise.all(pending);
  clearInterval(heapPoll);
  const seconds = (performance.now() - started) / 1000;
  return {
    requests: IN_FLIGHT,
    ok,
    wrong,
    byStatus,
    seconds,
    peakRssMb: peakRssBytes(pid) / 1024 / 1024,
    peakHeapMb: peakHeap / 1024 / 1024,
    peakInFlight,
    inFlightAfter: await scrape(port, 'rpc_in_flight'),
  };
}

async function scrape(port: number, metric: string): Promise<number> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  const text = await response.text();
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${metric} `));
  return line ? Number(line.split(' ')[1]) : Number.NaN;
}

async function waitReady(url: string): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const ready = await fetch(url).then(
      (res) => res.ok,
      () => false,
    );
    if (ready) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${url} never became ready`);
}

function buildReport(results: RunResult[], inFlight: InFlightResult | undefined) {
  const find = (target: string, concurrency: number, bodyBytes = 100) =>
    results.find((r) => r.target === target && r.concurrency === concurrency && r.bodyBytes === bodyBytes);
  const bridge64 = find('bridge', 64);
  const echo64 = find('express-echo', 64);
  const raw64 = find('raw-amqp', 64);
  const bridge1 = find('bridge', 1);
  const bridgeMiB = find('bridge', 16, 1024 * 1024);
  const cpuRatio =
    bridge64 && echo64 && raw64
      ? bridge64.cpuMsPerRequest / (echo64.cpuMsPerRequest + raw64.cpuMsPerRequest)
      : Number.NaN;
  const throughputRatio = bridge64 && echo64 ? bridge64.rps / echo64.rps : Number.NaN;
  const ratios = {
    cpuVsHalves: { value: cpuRatio, target: '<= 1.0', met: cpuRatio <= 1.0 },
    throughputVsEcho: { value: throughputRatio, target: '>= 0.7', met: throughputRatio >= 0.7 },
    p50AtConcurrency1Ms: { value: bridge1?.p50 ?? Number.NaN, target: '<= 0.6', met: (bridge1?.p50 ?? 99) <= 0.6 },
    p99AtConcurrency1Ms: { value: bridge1?.p99 ?? Number.NaN, target: '<= 1.5', met: (bridge1?.p99 ?? 99) <= 1.5 },
    ...(inFlight && {
      inFlightAllAnswered: {
        value: inFlight.ok,
        target: `${inFlight.requests}`,
        met: inFlight.ok === inFlight.requests,
      },
      inFlightPeakRssMb: { value: inFlight.peakRssMb, target: '<= 200', met: inFlight.peakRssMb <= 200 },
      inFlightPendingAfter: { value: inFlight.inFlightAfter, target: '0', met: inFlight.inFlightAfter === 0 },
    }),
    oneMiBErrors: {
      value: (bridgeMiB?.errors ?? 0) + (bridgeMiB?.non2xx ?? 0),
      target: '0',
      met: bridgeMiB !== undefined && bridgeMiB.errors + bridgeMiB.non2xx === 0,
    },
  };

  const header = '| target | concurrency | body | req/s | p50 ms | p99 ms | max ms | errors | non-2xx | CPU µs/req |';
  const rule = '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |';
  const rows = results.map(
    (r) =>
      `| ${r.target} | ${r.concurrency} | ${formatBytes(r.bodyBytes)} | ${r.rps.toFixed(0)} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} | ${r.max.toFixed(1)} | ${r.errors} | ${r.non2xx} | ${(r.cpuMsPerRequest * 1000).toFixed(0)} |`,
  );
  const ratioRows = Object.entries(ratios).map(
    ([name, ratio]) =>
      `| ${name} | ${typeof ratio.value === 'number' ? Number(ratio.value.toFixed(3)) : ratio.value} | ${ratio.target} | ${ratio.met ? 'met' : '**missed**'} |`,
  );
  const inFlightLine = !inFlight
    ? ''
    : `${inFlight.requests} requests in flight at once (worker answers after ${IN_FLIGHT_DELAY_MS / 1000} s): ${inFlight.ok} answered correctly, ` +
      `statuses ${JSON.stringify(inFlight.byStatus)}, all done in ${inFlight.seconds.toFixed(1)} s, ` +
      `peak rpc_in_flight ${inFlight.peakInFlight}, bridge peak RSS ${inFlight.peakRssMb.toFixed(0)} MB, ` +
      `peak heap ${inFlight.peakHeapMb.toFixed(0)} MB, rpc_in_flight after: ${inFlight.inFlightAfter}.`;

  const series = (target: string) => CONCURRENCIES.map((c) => (find(target, c)?.p50 ?? 0).toFixed(2)).join(', ');
  const chart = [
    '```mermaid',
    'xychart-beta',
    '  title "p50 latency (ms) by concurrency: express-echo, bridge, raw-amqp, minimal (lines in that order)"',
    `  x-axis "concurrency" [${CONCURRENCIES.join(', ')}]`,
    '  y-axis "p50 ms"',
    `  line [${series('express-echo')}]`,
    `  line [${series('bridge')}]`,
    `  line [${series('raw-amqp')}]`,
    `  line [${series('minimal')}]`,
    '```',
  ].join('\n');

  const table = [header, rule, ...rows].join('\n');
  const markdown = [
    `Measured ${new Date().toISOString().slice(0, 10)} on this project's 2-core machine (${cpus()[0]?.model ?? 'unknown CPU'}), ` +
      `${ROUNDS} interleaved rounds of ${SECONDS} s per row, 100-byte bodies unless stated. CPU is the process under test ` +
      '(for raw-amqp, the client itself).',
    '',
    table,
    '',
    '| target ratio | value | goal | |',
    '| --- | ---: | ---: | --- |',
    ...ratioRows,
    '',
    inFlightLine,
    '',
    chart,
  ].join('\n');
  return { table: `${table}\n\n${ratioRows.join('\n')}\n\n${inFlightLine}`, markdown, ratios };
}

function formatBytes(bytes: number): string {
  if (bytes >= 1024 * 1024) return `${bytes / 1024 / 1024} MiB`;
  if (bytes >= 1024) return `${bytes / 1024} KiB`;
  return `${bytes} B`;
}

function updateReadme(markdown: string): void {
  const start = '<!-- bench:start -->';
  const end = '<!-- bench:end -->';
  const readme = readFileSync('README.md', 'utf8');
  const from = readme.indexOf(start);
  const to = readme.indexOf(end);
  if (from === -1 || to === -1) return;
  writeFileSync('README.md', `${readme.slice(0, from + start.length)}\n${markdown}\n${readme.slice(to)}`);
}

await main();
