/**
 * A sample RPC worker for amqp-rpc-bridge: it consumes one queue and answers every request with its
 * own body. It also shows what a worker can tell the bridge:
 *   - message header `http-status` (integer 200-599) sets the HTTP status of the response;
 *   - any other reply header comes back to the HTTP caller as `Amqp-Header-<name>`.
 * Request headers it understands (send them through the bridge as `Amqp-Header-<name>`):
 *   - `reply-status`: the status to answer with (e.g. 201, 422);
 *   - `delay-ms`: wait this long before answering (to try timeouts).
 *
 * Run: AMQP_URL=amqp://guest:guest@127.0.0.1:5672 RPC_QUEUE=echo node dist/examples/echo-worker.js
 * (also PREFETCH, default 32, and QUEUE_DURABLE, default true).
 */
import { hostname } from 'node:os';
import { pathToFileURL } from 'node:url';
import amqp, { type Channel, type ConsumeMessage } from 'amqplib';

export interface EchoWorkerOptions {
  readonly url: string;
  readonly queue: string;
  /** How many requests this worker works on at once. */
  readonly prefetch?: number;
  /** Declare the queue as durable (production) or auto-delete (tests and demos). */
  readonly durable?: boolean;
}

export interface RunningWorker {
  /** Resolves when the connection to the broker is gone, for whatever reason. */
  readonly closed: Promise<void>;
  close(): Promise<void>;
}

export async function startEchoWorker(options: EchoWorkerOptions): Promise<RunningWorker> {
  // noDelay matters: the reply and the ack leave as two small writes, and without it the second
  // one waits for the broker's delayed ACK, adding ~40 ms to every RPC.
  const connection = await amqp.connect(options.url, {
    noDelay: true,
    clientProperties: { connection_name: `echo-worker@${hostname()}` },
  });
  connection.on('error', (err: Error) => console.error('worker connection error:', err.message));
  const closed = new Promise<void>((resolve) => connection.once('close', () => resolve()));
  const channel = await connection.createChannel();
  channel.on('error', (err: Error) => console.error('worker channel error:', err.message));
  const durable = options.durable ?? true;
  await channel.assertQueue(options.queue, { durable, autoDelete: !durable });
  await channel.prefetch(options.prefetch ?? 32);
  await channel.consume(options.queue, (message) => {
    if (message === null) return;
    answer(channel, message).catch((err: unknown) => {
      // The channel closed while this request was being worked on (e.g. during a delay): the
      // broker redelivers the unacked request to another consumer, so there is nothing to do here.
      console.error('echo worker could not answer:', err instanceof Error ? err.message : err);
    });
  });
  return {
    closed,
    async close() {
      await connection.close().catch(() => undefined);
    },
  };
}

async function answer(channel: Channel, message: ConsumeMessage): Promise<void> {
  const { properties } = message;
  const headers: Record<string, unknown> = properties.headers ?? {};
  const delayMs = Number(headers['delay-ms'] ?? 0);
  if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));

  // The bridge stopped waiting at x-deadline (epoch ms); work done after it is thrown away.
  const deadline = Number(headers['x-deadline']);
  const replyTo: unknown = properties.replyTo;
  if (typeof replyTo === 'string' && !(deadline > 0 && Date.now() > deadline)) {
    const replyHeaders: Record<string, unknown> = { worker: hostname(), 'echoed-bytes': message.content.length };
    if (headers['reply-status'] !== undefined) replyHeaders['http-status'] = Number(headers['reply-status']);
    // reply_to is opaque: RabbitMQ and LavinMQ each rewrite it to their own form. Publish to it as given.
    channel.sendToQueue(replyTo, message.content, {
      correlationId: properties.correlationId,
      contentType: properties.contentType,
      contentEncoding: properties.contentEncoding,
      headers: replyHeaders,
    });
  }
  channel.ack(message);
}

const runDirectly = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (runDirectly) {
  const url = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
  const queue = process.env.RPC_QUEUE ?? 'echo';
  const prefetch = Number(process.env.PREFETCH ?? 32);
  const durable = process.env.QUEUE_DURABLE !== 'false';
  startEchoWorker({ url, queue, prefetch, durable })
    .then((worker) => {
      console.log(`echo worker consuming "${queue}"`);
      const stop = () => void worker.close().then(() => process.exit(0));
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
      // Without a broker this worker is useless: exit and let the supervisor restart it.
      void worker.closed.then(() => {
        console.error('echo worker lost its broker connection; exiting');
        process.exit(1);
      });
    })
    .catch((err: unknown) => {
      console.error('echo worker failed to start:', err instanceof Error ? err.message : err);
      process.exit(1);
    });
}
