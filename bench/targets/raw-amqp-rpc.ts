/**
 * Baseline (b): the AMQP half alone. A raw amqplib client doing the same direct reply-to RPC as the
 * bridge (one connection, noDelay, mandatory publish, correlation ids), with no HTTP at all. Runs
 * CONCURRENCY loops for SECONDS after WARMUP_SECONDS (default 1) of warm-up and prints one JSON result line.
 */
import amqp from 'amqplib';
import { peakRssBytes, resetPeakRss } from '../lib/processes.js';
import { LatencyRecorder } from '../lib/stats.js';

const url = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const queue = process.env.QUEUE ?? 'echo';
const concurrency = Number(process.env.CONCURRENCY ?? 1);
const seconds = Number(process.env.SECONDS ?? 3);
const body = Buffer.alloc(Number(process.env.BODY_BYTES ?? 100), 'x');
const REPLY_TO = 'amq.rabbitmq.reply-to';

const connection = await amqp.connect(url, { noDelay: true });
const channel = await connection.createChannel();
const waiting = new Map<string, () => void>();
await channel.consume(
  REPLY_TO,
  (message) => {
    const id = message?.properties.correlationId as string | undefined;
    const resolve = id === undefined ? undefined : waiting.get(id);
    if (resolve) {
      waiting.delete(id as string);
      resolve();
    }
  },
  { noAck: true },
);

let sequence = 0;
function call(): Promise<void> {
  const correlationId = String(++sequence);
  return new Promise((resolve) => {
    waiting.set(correlationId, resolve);
    channel.sendToQueue(queue, body, { correlationId, replyTo: REPLY_TO, mandatory: true, expiration: '30000' });
  });
}

async function run(untilMs: number, latencies: LatencyRecorder | undefined): Promise<number> {
  let done = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < untilMs) {
        const started = performance.now();
        await call();
        latencies?.record(performance.now() - started);
        done += 1;
      }
    }),
  );
  return done;
}

await run(Date.now() + Number(process.env.WARMUP_SECONDS ?? 1) * 1000, undefined);
const latencies = new LatencyRecorder();
// MEMORY=1: the peak RSS of the measured part alone, and its rise above the RSS before it.
const memory = process.env.MEMORY === '1';
const rssBefore = memory ? resetPeakRss(process.pid) : 0;
const cpuBefore = process.cpuUsage();
const started = performance.now();
const requests = await run(Date.now() + seconds * 1000, latencies);
const elapsed = (performance.now() - started) / 1000;
const cpu = process.cpuUsage(cpuBefore);
const summary = latencies.summary();
const peakRss = memory ? peakRssBytes(process.pid) : 0;
process.stdout.write(
  `${JSON.stringify({
    requests,
    seconds: elapsed,
    rps: requests / elapsed,
    p50: summary.p50,
    p99: summary.p99,
    max: summary.max,
    cpuMsPerRequest: (cpu.user + cpu.system) / 1000 / requests,
    ...(memory && { peakRssMb: peakRss / 1024 / 1024, rssRiseMb: (peakRss - rssBefore) / 1024 / 1024 }),
  })}\n`,
);
await connection.close();
