import { runHttpLoad } from './http-load.js';
import { type Child, freePort, npmStartFlags, peakRssBytes, resetPeakRss, startChild } from './processes.js';

const MB = 1024 * 1024;

import { combineByMedian, type RunResult } from './stats.js';

/** A bridge already running, answering RPCs for `queue` (bench:compare's two builds, bench:tracing's two configurations). */
export interface RunningBridge {
  readonly name: string;
  readonly port: number;
  readonly pid: number;
}

export interface SideBySideOptions {
  readonly queue: string;
  readonly seconds: number;
  readonly rounds: number;
  readonly concurrencies: readonly number[];
  /** Body sizes in bytes (default 100), each measured at every concurrency. */
  readonly bodies?: readonly number[] | undefined;
  /** Requests per second in all, offered at that rate; undefined: as many as are answered. */
  readonly rate?: number | undefined;
  /** What the first column calls the bridges ("build", "bridge"). */
  readonly column: string;
}

/**
 * Two bridges measured in turns, interleaved round by round with the order alternating so that drift
 * favours neither; each warmed up first. Prints each round on stderr; returns a Markdown table of the
 * medians, with the second's CPU per request over the first's.
 */
export async function measureSideBySide(
  bridges: readonly [RunningBridge, RunningBridge],
  options: SideBySideOptions,
): Promise<string> {
  const sizes = options.bodies ?? [100];
  const payloads = new Map(sizes.map((size) => [size, Buffer.alloc(size, 'x')]));
  const run = async (bridge: RunningBridge, concurrency: number, size: number, seconds: number) => {
    // Each row's own peak RSS, and its rise above the RSS before it.
    const rssBefore = resetPeakRss(bridge.pid);
    const result = await runHttpLoad({
      target: bridge.name,
      url: `http://127.0.0.1:${bridge.port}/rpc/${options.queue}`,
      pid: bridge.pid,
      concurrency,
      body: payloads.get(size) ?? Buffer.alloc(size, 'x'),
      seconds,
      ...(options.rate === undefined ? {} : { rate: options.rate }),
    });
    const peak = peakRssBytes(bridge.pid);
    return { ...result, peakRssMb: peak / MB, rssRiseMb: (peak - rssBefore) / MB };
  };
  for (const bridge of bridges) await run(bridge, 16, 100, 2);

  const rounds = new Map<string, RunResult[]>();
  for (let round = 1; round <= options.rounds; round++) {
    for (const size of sizes) {
      for (const concurrency of options.concurrencies) {
        const order = round % 2 === 0 ? [...bridges].reverse() : bridges;
        for (const bridge of order) {
          const result = await run(bridge, concurrency, size, options.seconds);
          const key = `${bridge.name}|${concurrency}|${size}`;
          rounds.set(key, [...(rounds.get(key) ?? []), result]);
          console.error(
            `round ${round} ${bridge.name.padEnd(22)} c=${String(concurrency).padEnd(3)} body=${String(size).padEnd(8)} ` +
              `${result.rps.toFixed(0).padStart(6)} req/s p50 ${result.p50.toFixed(2)} ms p99 ${result.p99.toFixed(2)} ms ` +
              `cpu ${(result.cpuMsPerRequest * 1000).toFixed(0)} µs/req`,
          );
        }
      }
    }
  }
  const lines = [
    `${options.rounds} interleaved rounds of ${options.seconds} s, keep-alive` +
      `${options.rate === undefined ? '' : `, ${options.rate} requests/s offered`}; CPU is the bridge process's (all its threads); ` +
      'each figure the median of the rounds, with the range of CPU per request beside it.',
    '',
    `| ${options.column} | body | concurrency | req/s | p50 ms | p99 ms | CPU µs/req | CPU range | peak RSS MB (rise) | errors | non-2xx |`,
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const size of sizes) {
    for (const concurrency of options.concurrencies) {
      const [first, second] = bridges.map((bridge) => {
        const each = rounds.get(`${bridge.name}|${concurrency}|${size}`) ?? [];
        const result = combineByMedian(each);
        const cpus = each.map((r) => r.cpuMsPerRequest * 1000);
        lines.push(
          `| ${bridge.name} | ${size} | ${concurrency} | ${result.rps.toFixed(0)} | ${result.p50.toFixed(2)} | ${result.p99.toFixed(2)} | ` +
            `${(result.cpuMsPerRequest * 1000).toFixed(0)} | ${Math.min(...cpus).toFixed(0)}–${Math.max(...cpus).toFixed(0)} | ` +
            `${(result.peakRssMb ?? 0).toFixed(0)} (+${(result.rssRiseMb ?? 0).toFixed(0)}) | ${result.errors} | ${result.non2xx} |`,
        );
        return result.cpuMsPerRequest;
      });
      if (first && second) {
        lines.push(`| second / first | ${size} | ${concurrency} | | | | ${(second / first).toFixed(2)} × | | | | |`);
      }
    }
  }
  return lines.join('\n');
}

/**
 * A bridge of `mainJs` (a build's dist/src/main.js) on a free loopback port, with the node flags its
 * own `npm start` gives it (`nodeFlags`, from npmStartFlags), so that a change of flags is measured too.
 */
export async function startSideBridge(
  name: string,
  mainJs: string,
  env: Record<string, string>,
  nodeFlags: readonly string[] = npmStartFlags('.'),
): Promise<{ readonly child: Child; readonly bridge: RunningBridge }> {
  const port = await freePort();
  const child = startChild('node', [...nodeFlags, mainJs], {
    AMQP_URL: env.AMQP_URL ?? '',
    PORT: String(port),
    HOST: '127.0.0.1',
    ...env,
  });
  await child.waitForLine(/"msg":"listening"/);
  return { child, bridge: { name, port, pid: child.pid } };
}

/** An OTLP sink (targets/otlp-sink.ts), and what a bridge needs to trace every request to it. */
export async function startTracingSink(): Promise<{ readonly child: Child; readonly env: Record<string, string> }> {
  const port = await freePort();
  const child = startChild('node', ['--import', 'tsx', 'bench/targets/otlp-sink.ts'], { PORT: String(port) });
  await child.waitForLine(/"port"/);
  return {
    child,
    env: { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `http://127.0.0.1:${port}/v1/traces`, OTEL_TRACES_SAMPLER: 'always_on' },
  };
}
