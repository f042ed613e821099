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
 * (also PREFETCH, default 32, QUEUE_DURABLE, default true, and READY_FILE: a file that exists only
 * while the worker consumes, for a container health check).
 * SIGTERM/SIGINT close the connection and exit 0; losing the broker exits 1, for the supervisor to restart it.
 */
import { rmSync, writeFileSync } from 'node:fs';
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
  /**
   * Resolves when the worker has stopped consuming, for whatever reason: `lost` is false when
   * close() asked for it, true when the broker went away or took the channel or consumer away.
   */
  readonly closed: Promise<{ readonly lost: boolean }>;
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
  // close() sets this first, so that our own close is not mistaken for losing the broker.
  let closing = false;
  const closed = new Promise<{ lost: boolean }>((resolve) =>
    connection.once('close', () => resolve({ lost: !closing })),
  );
  // A worker whose channel or consumer is gone consumes nothing: close the connection, so that
  // `closed` says so and the supervisor restarts the worker.
  const giveUp = (): void => {
    if (!closing) connection.close().catch(() => undefined);
  };
  const channel = await connection.createChannel();
  channel.on('error', (err: Error) => console.error('worker channel error:', err.message));
  channel.on('close', giveUp);
  const durable = options.durable ?? true;
  await channel.assertQueue(options.queue, { durable, autoDelete: !durable });
  await channel.prefetch(options.prefetch ?? 32);
  await channel.consume(options.queue, (message) => {
    // null: the broker cancelled the consumer (e.g. the queue was deleted).
    if (message === null) {
      giveUp();
      return;
    }
    answer(channel, message).catch((err: unknown) => {
      // The channel closed while this request was being worked on (e.g. during a delay): the
      // broker redelivers the unacked request to another consumer, so there is nothing to do here.
      console.error('echo worker could not answer:', err instanceof Error ? err.message : err);
    });
  });
  return {
    closed,
    async close() {
      closing = true;
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
  const readyFile = process.env.READY_FILE || undefined;
  // A restarted container keeps its files: a ready file left by a killed process must not count.
  const notReady = (): void => {
    if (readyFile !== undefined) rmSync(readyFile, { force: true });
  };
  notReady();
  let worker: RunningWorker | undefined;
  // A signal exits 0, also one that arrives while the worker is still connecting.
  const stop = (): void => {
    notReady();
    void (worker?.close() ?? Promise.resolve()).then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  startEchoWorker({ url, queue, prefetch, durable })
    .then((started) => {
      worker = started;
      console.log(`echo worker consuming "${queue}"`);
      if (readyFile !== undefined) writeFileSync(readyFile, `${process.pid}\n`);
      void started.closed.then(({ lost }) => {
        notReady();
        // Our own close (a signal) exits 0 in stop(). Without a broker this worker is useless:
        // exit and let the supervisor restart it.
        if (!lost) return;
        console.error('echo worker lost its broker connection; exiting');
        process.exit(1);
      });
    })
    .catch((err: unknown) => {
      console.error('echo worker failed to start:', err instanceof Error ? err.message : err);
      process.exit(1);
    });
}
