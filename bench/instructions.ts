/**
 * npm run bench:instructions: CPU instructions per request at concurrency 1, counted by valgrind's
 * callgrind in the process under test. Unlike time, an instruction count barely moves when other
 * work shares the machine, so it compares the bridge with the minimal bridge and the express echo
 * even on a loaded machine. (Instructions are not time: cache misses and wake-ups cost time too.)
 *
 * Each target runs under callgrind (about 50 times slower); the serial client warms it up for
 * BENCH_WARMUP_SECONDS (default 20), callgrind's counters are zeroed, it measures for
 * BENCH_SECONDS (default 20), and the counters are dumped. Prints a table; writes nothing else.
 * The dumps (callgrind.out.*) are left in the OS temp folder for callgrind_annotate.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { runLoad } from './lib/load.js';
import { type Child, freePort, startChild } from './lib/processes.js';
import { echoQueue, singleBrokerContext, startWorker, waitReady } from './lib/targets.js';

/** BENCH_TARGETS: only these of express-echo, minimal, bridge (comma-separated). */
const ONLY = process.env.BENCH_TARGETS?.split(',');
const WARMUP_SECONDS = Number(process.env.BENCH_WARMUP_SECONDS ?? 20);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 20);
const context = singleBrokerContext('bridge-callgrind-', WARMUP_SECONDS);
const { rabbitmqUrl, logDir: outDir } = context;

interface Counted {
  readonly target: string;
  readonly requests: number;
  readonly instructions: number;
}

/** Runs `args` under callgrind with counting off until the warm-up is over. */
function underCallgrind(name: string, args: string[], env: Record<string, string>, stdoutFile?: string): Child {
  return startChild(
    'valgrind',
    ['--tool=callgrind', `--callgrind-out-file=${join(outDir, `callgrind.out.${name}`)}`, 'node', ...args],
    env,
    stdoutFile === undefined ? {} : { stdoutFile },
  );
}

/**
 * `host`: the HOST variable the target was started with, if any. vgdb, through which callgrind_control
 * reaches the process, names its rendezvous files after $HOST, and the bridge reads HOST as the
 * address to listen on; callgrind_control must see the same value or it cannot find the process.
 */
async function count(
  target: string,
  child: Child,
  ready: () => Promise<unknown>,
  url: string,
  host?: string,
): Promise<Counted> {
  // However it ends, the target under callgrind must not outlive the count.
  try {
    await ready();
    return await countReady(target, child, url, host);
  } finally {
    await child.stop();
  }
}

async function countReady(target: string, child: Child, url: string, host: string | undefined): Promise<Counted> {
  const control = (command: string) =>
    execFileSync('callgrind_control', [command, String(child.pid)], {
      stdio: 'ignore',
      env: host === undefined ? process.env : { ...process.env, HOST: host },
    });
  const result = await runLoad({
    target,
    url,
    cpuPid: child.pid,
    concurrency: 1,
    bodyBytes: 100,
    bodyKind: 'bytes',
    warmupSeconds: WARMUP_SECONDS,
    seconds: SECONDS,
    onMeasuring: () => control('--zero'),
  });
  control('--dump');
  // Callgrind acts on the request when the process next runs code; wait for the dump (<out-file>.<n>),
  // whose "totals:" line holds the instructions (Ir) since the zeroing.
  const dump = await waitForDump(target, url);
  const totals = /^totals:\s+(\d+)/m.exec(readFileSync(join(outDir, dump), 'utf8'));
  const counted = { target, requests: result.requests, instructions: Number(totals?.[1] ?? Number.NaN) };
  console.error(
    `  ${target}: ${counted.requests} requests, ${Math.round(counted.instructions / counted.requests)} instructions each`,
  );
  return counted;
}

/** An idle process runs no code, so every 2 s a GET (a few instructions among millions) wakes it. */
async function waitForDump(target: string, url: string): Promise<string> {
  for (let attempt = 1; attempt <= 600; attempt++) {
    const dump = readdirSync(outDir).find((file) => file.startsWith(`callgrind.out.${target}.`));
    if (dump !== undefined) return dump;
    if (attempt % 20 === 0) await fetch(url).catch(() => undefined);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`no callgrind dump for ${target} after 60 s`);
}

async function countEcho(): Promise<Counted> {
  const port = await freePort();
  const echo = underCallgrind('express-echo', ['--import', 'tsx', 'bench/targets/express-echo.ts'], {
    PORT: String(port),
  });
  return count('express-echo', echo, () => echo.waitForLine(/"port"/, 300_000), `http://127.0.0.1:${port}/echo`);
}

async function countMinimal(): Promise<Counted> {
  const port = await freePort();
  const minimal = underCallgrind('minimal', ['--import', 'tsx', 'bench/targets/minimal-bridge.ts'], {
    AMQP_URL: rabbitmqUrl,
    QUEUE: echoQueue(context),
    PORT: String(port),
  });
  return count('minimal', minimal, () => minimal.waitForLine(/"port"/, 300_000), `http://127.0.0.1:${port}/rpc`);
}

async function countBridge(): Promise<Counted> {
  const port = await freePort();
  const bridge = underCallgrind(
    'bridge',
    [...context.bridgeNodeFlags, 'dist/src/main.js'],
    { AMQP_URL: rabbitmqUrl, PORT: String(port), HOST: '127.0.0.1' },
    join(outDir, 'bridge.log'),
  );
  return count(
    'bridge',
    bridge,
    () => waitReady(`http://127.0.0.1:${port}/readyz`, 300_000),
    `http://127.0.0.1:${port}/rpc/${echoQueue(context)}`,
    '127.0.0.1',
  );
}

async function main(): Promise<void> {
  const worker = await startWorker(rabbitmqUrl, echoQueue(context));
  const counted: Counted[] = [];
  try {
    const wanted = (target: string) => ONLY === undefined || ONLY.includes(target);
    if (wanted('express-echo')) counted.push(await countEcho());
    if (wanted('minimal')) counted.push(await countMinimal());
    if (wanted('bridge')) counted.push(await countBridge());
  } finally {
    await worker.stop();
  }
  console.log('| target | requests counted | instructions per request |');
  console.log('| --- | ---: | ---: |');
  for (const row of counted) {
    console.log(
      `| ${row.target} | ${row.requests} | ${Math.round(row.instructions / row.requests).toLocaleString('en')} |`,
    );
  }
  console.error(`callgrind dumps in ${outDir}`);
}

await main();
