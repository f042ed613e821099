/**
 * npm run bench:profile: where a target's CPU goes at one body size, as `node --cpu-prof` sees it, and
 * how much of its CPU time the kernel spent on its behalf (system time: socket copies, and on loopback
 * the receiving side's TCP work too). For big bodies the split matters more than any one function.
 *
 * Each target (express-echo, minimal, bridge; BENCH_TARGETS picks) is started under --cpu-prof, loaded
 * at BENCH_CONCURRENCY (default 16) with BENCH_BODY_BYTES bodies (default 1 MiB) for
 * BENCH_WARMUP_SECONDS (default 3), then measured for BENCH_SECONDS (default 10), and stopped; the
 * profile (written on exit) therefore also holds the warm-up, at the same load. Prints CPU per
 * request (user and system), and the top self-time entries of each profile. Writes nothing else; the
 * profiles (and the bridge's log) stay in the OS temp folder. BENCH_NODE_FLAGS: more node flags for every
 * target (e.g. --trace-gc); BENCH_BRIDGE_NODE_FLAGS: the bridge's own (default as `npm start`);
 * BENCH_BRIDGE_ENV: more environment for the bridge, as JSON (`{"AMQP_CHANNELS":"1"}`).
 */
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { runLoad } from './lib/load.js';
import { type Child, cpuSplitMs, freePort, startChild } from './lib/processes.js';
import { echoQueue, singleBrokerContext, startWorker, waitReady } from './lib/targets.js';

const ONLY = (process.env.BENCH_TARGETS ?? 'express-echo,minimal,bridge').split(',');
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 16);
const BODY_BYTES = Number(process.env.BENCH_BODY_BYTES ?? 1024 * 1024);
const WARMUP_SECONDS = Number(process.env.BENCH_WARMUP_SECONDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const TOP = Number(process.env.BENCH_TOP ?? 15);
const context = singleBrokerContext(
  'bridge-cpu-prof-',
  WARMUP_SECONDS,
  process.env.BENCH_BRIDGE_NODE_FLAGS?.split(' ').filter(Boolean),
);
const { rabbitmqUrl, logDir: outDir } = context;
/** Enough for the largest body measured, for the targets that have a limit. */
const BODY_LIMIT = String(Math.max(BODY_BYTES * 2, 1024 * 1024));

interface Started {
  readonly url: string;
  readonly target: Child;
  readonly others: readonly Child[];
}

async function start(name: string, profileDir: string): Promise<Started> {
  const prof = [
    '--cpu-prof',
    `--cpu-prof-dir=${profileDir}`,
    ...(process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean),
  ];
  const port = await freePort();
  if (name === 'express-echo') {
    const echo = startChild('node', [...prof, '--import', 'tsx', 'bench/targets/express-echo.ts'], {
      PORT: String(port),
      BODY_LIMIT,
    });
    await echo.waitForLine(/"port"/);
    return { url: `http://127.0.0.1:${port}/echo`, target: echo, others: [] };
  }
  const worker = await startWorker(rabbitmqUrl, echoQueue(context));
  if (name === 'minimal') {
    const minimal = startChild('node', [...prof, '--import', 'tsx', 'bench/targets/minimal-bridge.ts'], {
      AMQP_URL: rabbitmqUrl,
      QUEUE: echoQueue(context),
      PORT: String(port),
    });
    await minimal.waitForLine(/"port"/);
    return { url: `http://127.0.0.1:${port}/rpc`, target: minimal, others: [worker] };
  }
  const bridge = startChild(
    'node',
    [...context.bridgeNodeFlags, ...prof, 'dist/src/main.js'],
    {
      AMQP_URL: rabbitmqUrl,
      PORT: String(port),
      HOST: '127.0.0.1',
      MAX_BODY_BYTES: BODY_LIMIT,
      ...(JSON.parse(process.env.BENCH_BRIDGE_ENV ?? '{}') as Record<string, string>),
    },
    { stdoutFile: join(outDir, 'bridge.log') },
  );
  await waitReady(`http://127.0.0.1:${port}/readyz`);
  return { url: `http://127.0.0.1:${port}/rpc/${echoQueue(context)}`, target: bridge, others: [worker] };
}

interface ProfileNode {
  readonly id: number;
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
}

/** Self time per function (name, file and line), as shares of the whole profile. */
function topSelf(file: string): Array<[string, number]> {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as {
    nodes: ProfileNode[];
    samples: number[];
    timeDeltas: number[];
  };
  const keyOf = new Map<number, string>();
  for (const { id, callFrame } of profile.nodes) {
    const where = callFrame.url === '' ? '' : ` ${basename(callFrame.url)}:${callFrame.lineNumber + 1}`;
    keyOf.set(id, `${callFrame.functionName || '(anonymous)'}${where}`);
  }
  const self = new Map<string, number>();
  let total = 0;
  profile.samples.forEach((id, index) => {
    const delta = profile.timeDeltas[index] ?? 0;
    const key = keyOf.get(id) ?? '?';
    self.set(key, (self.get(key) ?? 0) + delta);
    total += delta;
  });
  return [...self.entries()]
    .map(([key, time]): [string, number] => [key, time / total])
    .sort((a, b) => b[1] - a[1])
    .slice(0, TOP);
}

async function profileOne(name: string): Promise<void> {
  const profileDir = mkdtempSync(join(outDir, `${name}-`));
  const started = await start(name, profileDir);
  let line: string;
  try {
    let before = { user: 0, system: 0 };
    const result = await runLoad({
      target: name,
      url: started.url,
      cpuPid: started.target.pid,
      concurrency: CONCURRENCY,
      bodyBytes: BODY_BYTES,
      bodyKind: 'bytes',
      warmupSeconds: WARMUP_SECONDS,
      seconds: SECONDS,
      onMeasuring: () => {
        before = cpuSplitMs(started.target.pid);
      },
    });
    const after = cpuSplitMs(started.target.pid);
    const perRequest = (ms: number) => ((ms * 1000) / result.requests).toFixed(0);
    line =
      `${name}: ${result.requests} requests (${result.rps.toFixed(0)}/s, ${result.errors + result.non2xx} failed), ` +
      `CPU ${perRequest(after.user + after.system - before.user - before.system)} µs/req ` +
      `(user ${perRequest(after.user - before.user)}, system ${perRequest(after.system - before.system)}), ` +
      `p50 ${result.p50.toFixed(2)} ms, p99 ${result.p99.toFixed(2)} ms`;
  } finally {
    await started.target.stop();
    for (const child of started.others) await child.stop();
  }
  console.log(`\n${line}`);
  const file = readdirSync(profileDir).find((entry) => entry.endsWith('.cpuprofile'));
  if (file === undefined) {
    console.log('  (no profile written)');
    return;
  }
  console.log(`  profile: ${join(profileDir, file)}; top self time:`);
  for (const [key, share] of topSelf(join(profileDir, file)))
    console.log(`  ${(share * 100).toFixed(1).padStart(5)} %  ${key}`);
}

console.log(
  `concurrency ${CONCURRENCY}, ${BODY_BYTES}-byte bodies, ${WARMUP_SECONDS} s warm-up, ${SECONDS} s measured`,
);
for (const name of ONLY) await profileOne(name);
