/**
 * npm run soak: the built bridge under a steady mixed load for SOAK_MINUTES (default 5) at SOAK_RPS
 * (default 200): ~90% answered by an echo worker, ~5% timing out (a queue nobody consumes), ~5%
 * unroutable. Prints the bridge's RSS and heap every 10 s and fails (exit 1) if either grows by more
 * than 10% from the first minute after warm-up to the last minute (means of the samples in each, as
 * one sample of a garbage-collected heap is noise). Loopback only; stops by itself.
 *
 * npm run soak -- --chaos [--broker rabbitmq|lavinmq] [--minutes 10] [--rps 100] [--margin-ms 1000]: the
 * chaos soak instead (bench/chaos.ts), faults injected on a schedule into a broker of its own.
 */
import { randomBytes } from 'node:crypto';
import { Agent, request } from 'node:http';
import amqp from 'amqplib';
import { freePort, npmStartFlags, startChild } from './lib/processes.js';

if (process.argv.includes('--chaos')) {
  const { parseChaosOptions, runChaosSoak } = await import('./chaos.js');
  process.exit(await runChaosSoak(parseChaosOptions(process.argv.slice(2))));
}

const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const MINUTES = Number(process.env.SOAK_MINUTES ?? 5);
const RPS = Number(process.env.SOAK_RPS ?? 200);
const WARM_UP_S = 60;
const SAMPLE_EVERY_S = 10;
const GROWTH_LIMIT = 0.1;
const id = randomBytes(4).toString('hex');
const echoQueue = `soak.echo.${id}`;
const silentQueue = `soak.silent.${id}`;

const setup = await amqp.connect(AMQP_URL);
const setupChannel = await setup.createChannel();
await setupChannel.assertQueue(silentQueue, { durable: false, autoDelete: false, expires: (MINUTES + 5) * 60_000 });

const worker = startChild('node', ['dist/examples/echo-worker.js'], {
  AMQP_URL,
  RPC_QUEUE: echoQueue,
  QUEUE_DURABLE: 'false',
});
await worker.waitForLine(/consuming/);
const port = await freePort();
const bridge = startChild('node', [...npmStartFlags('.'), 'dist/src/main.js'], {
  AMQP_URL,
  PORT: String(port),
  HOST: '127.0.0.1',
});
await bridge.waitForLine(/"msg":"listening"/);
await new Promise((resolve) => setTimeout(resolve, 1000));

const agent = new Agent({ keepAlive: true, maxSockets: 64 });
const counts = new Map<string, number>();
function fire(n: number): void {
  const roll = n % 20;
  const [path, timeout] =
    roll === 0
      ? [`/rpc/${silentQueue}`, '100']
      : roll === 1
        ? [`/rpc/soak.nobody.${id}`, '1000']
        : [`/rpc/${echoQueue}`, '5000'];
  const req = request(
    { host: '127.0.0.1', port, path, method: 'POST', agent, headers: { 'Amqp-Timeout': timeout } },
    (res) => {
      res.resume();
      res.on('end', () => counts.set(String(res.statusCode), (counts.get(String(res.statusCode)) ?? 0) + 1));
    },
  );
  req.on('error', () => counts.set('error', (counts.get('error') ?? 0) + 1));
  req.end(`soak ${n}`);
}

async function sample(): Promise<{ rss: number; heap: number }> {
  const status = await import('node:fs').then((fs) => fs.readFileSync(`/proc/${bridge.pid}/status`, 'utf8'));
  const rss = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) * 1024;
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const heap = Number(/^nodejs_heap_size_used_bytes (\S+)$/m.exec(metrics)?.[1] ?? 0);
  return { rss, heap };
}

const started = Date.now();
const end = started + MINUTES * 60_000;
let sent = 0;
const ticker = setInterval(() => {
  // 10 ms ticks: RPS/100 requests each, the remainder spread.
  const due = Math.floor(((Date.now() - started) / 1000) * RPS) - sent;
  for (let i = 0; i < due; i++) fire(sent++);
}, 10);

const afterWarmUp: Array<{ rss: number; heap: number }> = [];
while (Date.now() < end) {
  await new Promise((resolve) => setTimeout(resolve, SAMPLE_EVERY_S * 1000));
  const now = await sample();
  const elapsed = Math.round((Date.now() - started) / 1000);
  if (elapsed > WARM_UP_S) afterWarmUp.push(now);
  console.log(
    `t=${String(elapsed).padStart(4)} s  sent ${sent}  rss ${(now.rss / 1e6).toFixed(1)} MB  heap ${(now.heap / 1e6).toFixed(1)} MB  ` +
      `statuses ${JSON.stringify(Object.fromEntries(counts))}${elapsed <= WARM_UP_S ? '  (warm-up)' : ''}`,
  );
}
clearInterval(ticker);
await new Promise((resolve) => setTimeout(resolve, 2000));
agent.destroy();
await bridge.stop();
await worker.stop();
await setupChannel.deleteQueue(silentQueue).catch(() => undefined);
await setup.close();

const window = Math.round(60 / SAMPLE_EVERY_S);
if (afterWarmUp.length < 2 * window) {
  console.log(`too short to judge: run at least ${(WARM_UP_S + 2 * 60) / 60} minutes`);
  process.exit(1);
}
const mean = (samples: Array<{ rss: number; heap: number }>, pick: 'rss' | 'heap') =>
  samples.reduce((sum, one) => sum + one[pick], 0) / samples.length;
const first = afterWarmUp.slice(0, window);
const lastMinute = afterWarmUp.slice(-window);
const rssGrowth = mean(lastMinute, 'rss') / mean(first, 'rss') - 1;
const heapGrowth = mean(lastMinute, 'heap') / mean(first, 'heap') - 1;
const verdict = rssGrowth <= GROWTH_LIMIT && heapGrowth <= GROWTH_LIMIT ? 'PASS' : 'FAIL';
console.log(
  `${verdict}: from the first to the last minute after warm-up, RSS grew ${(rssGrowth * 100).toFixed(1)}%, heap ${(heapGrowth * 100).toFixed(1)}% ` +
    `(limit ${GROWTH_LIMIT * 100}%); ${sent} requests, statuses ${JSON.stringify(Object.fromEntries(counts))}`,
);
process.exit(verdict === 'PASS' ? 0 : 1);
