import { runHttpLoad } from './http-load.js';
import { type Child, freePort, startChild } from './processes.js';
import { combine, type RunResult } from './stats.js';

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
  const body = Buffer.alloc(100, 'x');
  const run = (bridge: RunningBridge, concurrency: number, seconds: number) =>
    runHttpLoad({
      target: bridge.name,
      url: `http://127.0.0.1:${bridge.port}/rpc/${options.queue}`,
      pid: bridge.pid,
      concurrency,
      body,
      seconds,
      ...(options.rate === undefined ? {} : { rate: options.rate }),
    });
  for (const bridge of bridges) await run(bridge, 16, 2);

  const rounds = new Map<string, RunResult[]>();
  for (let round = 1; round <= options.rounds; round++) {
    for (const concurrency of options.concurrencies) {
      const order = round % 2 === 0 ? [...bridges].reverse() : bridges;
      for (const bridge of order) {
        const result = await run(bridge, concurrency, options.seconds);
        const key = `${bridge.name}|${concurrency}`;
        rounds.set(key, [...(rounds.get(key) ?? []), result]);
        console.error(
          `round ${round} ${bridge.name.padEnd(22)} c=${String(concurrency).padEnd(3)} ${result.rps.toFixed(0).padStart(6)} req/s ` +
            `p50 ${result.p50.toFixed(2)} ms p99 ${result.p99.toFixed(2)} ms cpu ${(result.cpuMsPerRequest * 1000).toFixed(0)} µs/req`,
        );
      }
    }
  }
  const lines = [
    `${options.rounds} interleaved rounds of ${options.seconds} s, 100-byte bodies, keep-alive` +
      `${options.rate === undefined ? '' : `, ${options.rate} requests/s offered`}; CPU is the bridge process's (all its threads).`,
    '',
    `| ${options.column} | concurrency | req/s | p50 ms | p99 ms | CPU µs/req | errors | non-2xx |`,
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const concurrency of options.concurrencies) {
    const [first, second] = bridges.map((bridge) => {
      const result = combine(rounds.get(`${bridge.name}|${concurrency}`) ?? []);
      lines.push(
        `| ${bridge.name} | ${concurrency} | ${result.rps.toFixed(0)} | ${result.p50.toFixed(2)} | ${result.p99.toFixed(2)} | ` +
          `${(result.cpuMsPerRequest * 1000).toFixed(0)} | ${result.errors} | ${result.non2xx} |`,
      );
      return result.cpuMsPerRequest;
    });
    if (first && second) lines.push(`| second / first | ${concurrency} | | | | ${(second / first).toFixed(2)} × | | |`);
  }
  return lines.join('\n');
}

/** A bridge of `mainJs` (a build's dist/src/main.js) as `npm start` runs it, on a free loopback port. */
export async function startSideBridge(
  name: string,
  mainJs: string,
  env: Record<string, string>,
): Promise<{ readonly child: Child; readonly bridge: RunningBridge }> {
  const port = await freePort();
  const child = startChild('node', ['--max-semi-space-size=4', mainJs], {
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
