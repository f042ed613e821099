/**
 * The replica drill for asynchronous calls and idempotency keys, and what they cost: two built bridges
 * (separate processes) on one broker, a worker that counts every delivery. Prints which replica answered
 * what, how many times the worker got each message, then latency per kind of call (sequential).
 *
 *   npm run drill:calls            (AMQP_URL: default amqp://guest:guest@127.0.0.1:5672; DRILL_CALLS: 200)
 */
import { randomBytes } from 'node:crypto';
import amqp from 'amqplib';
import { type Child, freePort, startChild } from './lib/processes.js';
import { LatencyRecorder } from './lib/stats.js';

const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const CALLS = Number(process.env.DRILL_CALLS ?? 200);
const queue = `drill.calls.${randomBytes(4).toString('hex')}`;

interface Replica {
  readonly name: string;
  readonly base: string;
  child: Child;
  readonly port: number;
}

async function startReplica(name: string, port: number): Promise<Replica> {
  const child = startChild('node', ['dist/src/main.js'], {
    AMQP_URL,
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
  });
  const replica = { name, base: `http://127.0.0.1:${port}`, child, port };
  await ready(replica);
  return replica;
}

async function ready(replica: Replica): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const answer = await fetch(`${replica.base}/readyz`).catch(() => undefined);
    if (answer?.status === 200) return;
    await sleep(100);
  }
  throw new Error(`${replica.name} did not become ready`);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const deliveries = new Map<string, number>();

async function startCountingWorker(): Promise<amqp.ChannelModel> {
  const connection = await amqp.connect(AMQP_URL);
  const channel = await connection.createChannel();
  await channel.assertQueue(queue, { durable: false, autoDelete: true });
  await channel.consume(
    queue,
    (message) => {
      if (message === null) return;
      const body = message.content.toString();
      deliveries.set(body, (deliveries.get(body) ?? 0) + 1);
      const delay = Number(message.properties.headers?.['delay-ms'] ?? 0);
      setTimeout(() => {
        channel.sendToQueue(String(message.properties.replyTo), Buffer.from(`done:${body}`), {
          correlationId: message.properties.correlationId,
          contentType: 'text/plain',
        });
      }, delay);
    },
    { noAck: true },
  );
  return connection;
}

function post(replica: Replica, body: string, headers: Record<string, string>): Promise<Response> {
  return fetch(`${replica.base}/rpc/${queue}`, {
    method: 'POST',
    headers: { 'Content-Type': 'text/plain', ...headers },
    body,
  });
}

const line = (...parts: unknown[]) => console.log(parts.join('  '));

async function drill(a: Replica, b: Replica): Promise<void> {
  line('== replica drill', `broker ${AMQP_URL.replace(/:[^:@/]*@/, ':***@')}`, `queue ${queue}`);
  const slow = { 'Amqp-Header-Delay-Ms': '1500' };

  const body1 = 'async-1';
  const posted = await post(a, body1, { Prefer: 'respond-async', ...slow });
  const location = posted.headers.get('location') ?? '';
  line('A POST  Prefer: respond-async', posted.status, location);
  line('B GET  ', (await fetch(`${b.base}${location}`)).status, '(pending)');
  // Killed, not stopped: nothing it could do on the way out (it knows of no call) matters.
  const killed = new Promise((resolve) => a.child.process.once('exit', resolve));
  a.child.process.kill('SIGKILL');
  await killed;
  line('A killed (SIGKILL) while the worker works');
  const waited = await fetch(`${b.base}${location}`, { headers: { Prefer: 'wait=10' } });
  line('B GET   Prefer: wait=10', waited.status, await waited.text());
  a.child = (await startReplica('A', a.port)).child;
  line('A started again');
  const again = await fetch(`${a.base}${location}`);
  line('A GET  ', again.status, await again.text());
  line('deliveries of', body1, deliveries.get(body1) ?? 0);

  const body2 = 'keyed-1';
  const key = `key-${randomBytes(6).toString('hex')}`;
  const firstTry = post(a, body2, { 'Idempotency-Key': key, ...slow });
  await sleep(300);
  const during = await post(b, body2, { 'Idempotency-Key': key, ...slow });
  const original = await firstTry;
  line(
    'A POST  Idempotency-Key',
    original.status,
    `replayed=${original.headers.get('idempotent-replayed')}`,
    await original.text(),
  );
  line(
    'B POST  same key, during',
    during.status,
    `replayed=${during.headers.get('idempotent-replayed')}`,
    await during.text(),
  );
  // The same request again (its Amqp-Header-* too: they are part of what a key stands for).
  const after = await post(b, body2, { 'Idempotency-Key': key, ...slow });
  line(
    'B POST  same key, after',
    after.status,
    `replayed=${after.headers.get('idempotent-replayed')}`,
    await after.text(),
  );
  const other = await post(a, 'keyed-2', { 'Idempotency-Key': key });
  line('A POST  same key, other body', other.status, ((await other.json()) as { type: string }).type);
  line('deliveries of', body2, deliveries.get(body2) ?? 0);
}

async function costs(a: Replica): Promise<void> {
  line(`== cost, ${CALLS} sequential calls each, replica A, ms`);
  const kinds: Array<[string, (i: number) => Promise<void>]> = [
    ['plain call', async (i) => void (await (await post(a, `p${i}`, {})).arrayBuffer())],
    [
      'Prefer: respond-async, wait=5 (answered inline)',
      async (i) => void (await (await post(a, `w${i}`, { Prefer: 'respond-async, wait=5' })).arrayBuffer()),
    ],
    [
      'Prefer: respond-async (202), then GET with Prefer: wait=5',
      async (i) => {
        const posted = await post(a, `g${i}`, { Prefer: 'respond-async' });
        await posted.arrayBuffer();
        await (
          await fetch(`${a.base}${posted.headers.get('location')}`, { headers: { Prefer: 'wait=5' } })
        ).arrayBuffer();
      },
    ],
    [
      'Idempotency-Key, first',
      async (i) => void (await (await post(a, `k${i}`, { 'Idempotency-Key': `drill-${queue}-${i}` })).arrayBuffer()),
    ],
    [
      'Idempotency-Key, replayed',
      async (i) => void (await (await post(a, `k${i}`, { 'Idempotency-Key': `drill-${queue}-${i}` })).arrayBuffer()),
    ],
  ];
  for (const [name, call] of kinds) {
    const latencies = new LatencyRecorder();
    for (let i = 0; i < CALLS; i++) {
      const started = performance.now();
      await call(i);
      latencies.record(performance.now() - started);
    }
    const result = latencies.summary();
    line(name.padEnd(58), `p50 ${result.p50.toFixed(2)}`, `p99 ${result.p99.toFixed(2)}`);
  }
}

const worker = await startCountingWorker();
const [portA, portB] = [await freePort(), await freePort()];
const a = await startReplica('A', portA);
const b = await startReplica('B', portB);
try {
  await drill(a, b);
  await costs(a);
} finally {
  await Promise.all([a.child.stop(), b.child.stop()]);
  await worker.close();
}
