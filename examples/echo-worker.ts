/**
 * A sample RPC worker for amqp-rpc-bridge: it consumes one queue and answers every request with its
 * own body. It also shows what a worker can tell the bridge:
 *   - message header `http-status` (integer 200-599) sets the HTTP status of the response;
 *   - any other reply header comes back to the HTTP caller as `Amqp-Header-<name>`.
 * Request headers it understands (send them through the bridge as `Amqp-Header-<name>`):
 *   - `reply-status`: the status to answer with (e.g. 201, 422);
 *   - `delay-ms`: wait this long before answering (to try timeouts);
 *   - `stream-pieces` (1-10000) and `stream-interval-ms` (0-60000): answer with that many replies, one
 *     per interval, each echoing the body with reply header `piece` = 1, 2, ...: all but the last carry
 *     `x-stream: more`, the last `x-stream: end` (a caller with `Accept: text/event-stream` gets each
 *     as it comes; see docs/streams.md).
 * Replies go out on connections of their own (reply-publisher.ts), and a request is acked once its
 * reply is confirmed or found undeliverable, so that a dead reply address cannot take the worker down
 * (needed on RabbitMQ 3.10 only; see reply-publisher.ts).
 *
 * Run: AMQP_URL=amqp://guest:guest@127.0.0.1:5672 RPC_QUEUE=echo node dist/examples/echo-worker.js
 * (also PREFETCH, default 32; QUEUE_TYPE, `classic` (default) or `quorum`, a queue replicated over a
 * RabbitMQ cluster, always durable; QUEUE_DURABLE, default true, for a classic queue; and READY_FILE:
 * a file that exists only while the worker consumes, for a container health check).
 * SIGTERM/SIGINT close the connection and exit 0; losing the broker exits 1, for the supervisor to restart it.
 *
 * Tracing, with the bridge's OTEL_* variables (e.g. OTEL_EXPORTER_OTLP_ENDPOINT; OTEL_SERVICE_NAME,
 * default `echo-worker`): each request gets a consumer span, child of the bridge's producer span, and
 * the reply carries that span's `traceparent`. Off, and the SDK not loaded, without them.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { pathToFileURL } from 'node:url';
import amqp, { type ChannelModel, type ConsumeMessage } from 'amqplib';
import { ConfigError } from '../src/config/config-error.js';
import { type ReplyFate, ReplyPublisher } from './reply-publisher.js';
import { type ProcessSpan, startWorkerTracing, type WorkerTracing, type WorkOutcome } from './worker-tracing.js';

/** `classic`, or `quorum`: replicated over a RabbitMQ cluster, so queued requests outlive a node. */
export type QueueType = 'classic' | 'quorum';
export const QUEUE_TYPES: readonly QueueType[] = ['classic', 'quorum'];

export interface EchoWorkerOptions {
  readonly url: string;
  readonly queue: string;
  /** How many requests this worker works on at once. */
  readonly prefetch?: number;
  /** `classic` (default) or `quorum`. A quorum queue is always durable. */
  readonly queueType?: QueueType;
  /** Declare a classic queue as durable (production) or auto-delete (tests and demos). */
  readonly durable?: boolean;
  /** Sent back in reply header `worker` (the caller sees `Amqp-Header-worker`). Default: the host name. */
  readonly name?: string;
  /** A consumer span per request (see worker-tracing.ts); none when undefined. The caller shuts it down. */
  readonly tracing?: WorkerTracing | undefined;
}

/** Counters since the worker started, live (for logs and tests). */
export interface WorkerStats {
  /** Requests delivered to this worker. */
  readonly received: number;
  /** Of those, how many the broker marked redelivered: another consumer had them before and let go. */
  readonly redelivered: number;
  /** Times a reply connection was lost and replaced (see reply-publisher.ts). */
  readonly replyConnectionsLost: number;
  /** Replies dropped because their address is dead: the broker closed a connection on one alone. */
  readonly repliesDropped: number;
}

export interface RunningWorker {
  /**
   * Resolves when the worker has stopped consuming, for whatever reason: `lost` is false when
   * close() asked for it, true when the broker went away or took the channel or consumer away.
   */
  readonly closed: Promise<{ readonly lost: boolean }>;
  readonly stats: WorkerStats;
  close(): Promise<void>;
}

type MutableStats = { -readonly [K in keyof WorkerStats]: WorkerStats[K] };

export async function startEchoWorker(options: EchoWorkerOptions): Promise<RunningWorker> {
  const queueType = options.queueType ?? 'classic';
  if (queueType === 'quorum' && options.durable === false) throw new Error('a quorum queue is always durable');
  const name = options.name ?? hostname();
  const tracing = options.tracing;
  const stats: MutableStats = { received: 0, redelivered: 0, replyConnectionsLost: 0, repliesDropped: 0 };
  const connection = await connect(options.url, 'echo-worker');
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
  let replies: ReplyPublisher;
  try {
    replies = await ReplyPublisher.open(options.url, stats, giveUp);
  } catch (err) {
    await connection.close().catch(() => undefined);
    throw err;
  }
  // Without the consuming connection there is nothing left to reply to.
  connection.once('close', () => void replies.close());
  const channel = await connection.createChannel();
  channel.on('error', (err: Error) => console.error('worker channel error:', err.message));
  channel.on('close', giveUp);
  const durable = queueType === 'quorum' || (options.durable ?? true);
  await channel.assertQueue(
    options.queue,
    queueType === 'quorum'
      ? { durable: true, arguments: { 'x-queue-type': 'quorum' } }
      : { durable, autoDelete: !durable },
  );
  await channel.prefetch(options.prefetch ?? 32);
  await channel.consume(options.queue, (message) => {
    // null: the broker cancelled the consumer (e.g. the queue was deleted).
    if (message === null) {
      giveUp();
      return;
    }
    // A redelivered request's requester is likelier to be gone (see reply-publisher.ts).
    const receivedAt = message.fields.redelivered ? 0 : Date.now();
    stats.received += 1;
    if (message.fields.redelivered) stats.redelivered += 1;
    const span = tracing?.startProcess(options.queue, message);
    // The request is acked once its reply is settled: taken by the broker, or given up on because its
    // address is dead (that caller was answered 502 long ago). Either way nobody else should redo it.
    answer(replies, message, name, receivedAt, span)
      .then(
        (outcome) => {
          span?.end(outcome);
          channel.ack(message);
        },
        (err: unknown) => {
          span?.end('failed', err);
          throw err;
        },
      )
      .catch((err: unknown) => {
        // The channel closed while this request was being worked on (e.g. during a delay), or we are
        // closing: the broker redelivers the unacked request to another consumer. Nothing to do here.
        if (!closing) console.error('echo worker could not answer:', err instanceof Error ? err.message : err);
      });
  });
  return {
    closed,
    stats,
    async close() {
      closing = true;
      // Replies already handed over get their confirm (and their requests their ack) before we go.
      await replies.drain(2_000);
      await connection.close().catch(() => undefined);
      await replies.close();
    },
  };
}

function connect(url: string, name: string): Promise<ChannelModel> {
  // noDelay matters: a reply, its confirm and the request's ack are small writes, and without it
  // each one after the first waits for the broker's delayed ACK, adding ~40 ms to every RPC.
  return amqp.connect(url, { noDelay: true, clientProperties: { connection_name: `${name}@${hostname()}` } });
}

const OUTCOME_OF: Readonly<Record<ReplyFate, WorkOutcome>> = {
  published: 'replied',
  nacked: 'nacked',
  dropped: 'reply-dropped',
};

async function answer(
  replies: ReplyPublisher,
  message: ConsumeMessage,
  name: string,
  receivedAt: number,
  span: ProcessSpan | undefined,
): Promise<WorkOutcome> {
  const { properties } = message;
  const headers: Record<string, unknown> = properties.headers ?? {};
  const delayMs = Number(headers['delay-ms'] ?? 0);
  if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));

  // The bridge stopped waiting at x-deadline (epoch ms); work done after it is thrown away.
  const deadline = Number(headers['x-deadline']);
  const replyTo: unknown = properties.replyTo;
  if (typeof replyTo !== 'string') return 'no-reply-to';
  if (deadline > 0 && Date.now() > deadline) return 'expired';
  const replyHeaders: Record<string, unknown> = { worker: name, 'echoed-bytes': message.content.length };
  if (headers['reply-status'] !== undefined) replyHeaders['http-status'] = Number(headers['reply-status']);
  if (span !== undefined) {
    // Whoever reads the reply continues the trace from the worker's span.
    replyHeaders.traceparent = span.replyTrace.traceparent;
    if (span.replyTrace.tracestate) replyHeaders.tracestate = span.replyTrace.tracestate;
  }
  const pieces = boundedInteger(headers['stream-pieces'], 1, 10_000);
  if (pieces !== undefined) {
    return streamPieces(replies, message, replyTo, replyHeaders, receivedAt, deadline, {
      pieces,
      intervalMs: boundedInteger(headers['stream-interval-ms'], 0, 60_000) ?? 0,
    });
  }
  // reply_to is opaque: RabbitMQ and LavinMQ each rewrite it to their own form. Publish to it as given.
  const fate = await replies.send(
    replyTo,
    message.content,
    {
      correlationId: properties.correlationId,
      contentType: properties.contentType,
      contentEncoding: properties.contentEncoding,
      headers: replyHeaders,
    },
    receivedAt,
  );
  return OUTCOME_OF[fate];
}

/** An integer header within bounds, or undefined (absent or out of range: the plain echo). */
function boundedInteger(value: unknown, min: number, max: number): number | undefined {
  const parsed = Number(value);
  return Number.isInteger(parsed) && parsed >= min && parsed <= max ? parsed : undefined;
}

/**
 * Several replies to one request, all with its correlation id: the stream contract. Stops early once
 * the caller's deadline has passed, or a reply could not be delivered (its caller is gone).
 */
async function streamPieces(
  replies: ReplyPublisher,
  message: ConsumeMessage,
  replyTo: string,
  replyHeaders: Record<string, unknown>,
  receivedAt: number,
  deadline: number,
  stream: { readonly pieces: number; readonly intervalMs: number },
): Promise<WorkOutcome> {
  const { properties } = message;
  let fate: ReplyFate = 'published';
  for (let piece = 1; piece <= stream.pieces; piece++) {
    if (piece > 1 && stream.intervalMs > 0) await new Promise((resolve) => setTimeout(resolve, stream.intervalMs));
    if (deadline > 0 && Date.now() > deadline) return 'expired';
    const last = piece === stream.pieces;
    fate = await replies.send(
      replyTo,
      message.content,
      {
        correlationId: properties.correlationId,
        contentType: properties.contentType,
        contentEncoding: properties.contentEncoding,
        headers: { ...replyHeaders, piece, 'x-stream': last ? 'end' : 'more' },
      },
      receivedAt,
    );
    if (fate !== 'published') break;
  }
  return OUTCOME_OF[fate];
}

const runDirectly = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (runDirectly) {
  const url = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
  const queue = process.env.RPC_QUEUE ?? 'echo';
  const prefetch = Number(process.env.PREFETCH ?? 32);
  const queueType = (process.env.QUEUE_TYPE || 'classic') as QueueType;
  if (!QUEUE_TYPES.includes(queueType)) {
    console.error(`QUEUE_TYPE must be one of ${QUEUE_TYPES.join(', ')}, got ${JSON.stringify(queueType)}`);
    process.exit(78);
  }
  const durable = process.env.QUEUE_DURABLE !== 'false';
  const readyFile = process.env.READY_FILE || undefined;
  // A restarted container keeps its files: a ready file left by a killed process must not count.
  const notReady = (): void => {
    if (readyFile !== undefined) rmSync(readyFile, { force: true });
  };
  notReady();
  let worker: RunningWorker | undefined;
  let tracing: WorkerTracing | undefined;
  // The last spans go out before the process does, but a collector that does not answer must not
  // hold the exit (the exporter's own timeout is 10 s, docker stop's whole grace period).
  const flushTraces = () =>
    Promise.race([tracing?.shutdown(), new Promise((resolve) => setTimeout(resolve, 1_000).unref())]);
  // A signal exits 0, also one that arrives while the worker is still connecting.
  const stop = (): void => {
    notReady();
    void (worker?.close() ?? Promise.resolve()).then(flushTraces).then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  startWorkerTracing(process.env, 'echo-worker')
    .then((traced) => {
      tracing = traced;
      return startEchoWorker({
        url,
        queue,
        prefetch,
        queueType,
        ...(queueType === 'classic' ? { durable } : {}),
        tracing,
      });
    })
    .then((started) => {
      worker = started;
      console.log(`echo worker consuming "${queue}" (${queueType} queue)`);
      if (readyFile !== undefined) writeFileSync(readyFile, `${process.pid}\n`);
      void started.closed.then(({ lost }) => {
        notReady();
        // Our own close (a signal) exits 0 in stop(). Without a broker this worker is useless:
        // exit and let the supervisor restart it.
        if (!lost) return;
        console.error('echo worker lost its broker connection; exiting');
        void flushTraces().then(() => process.exit(1));
      });
    })
    .catch((err: unknown) => {
      if (err instanceof ConfigError) {
        console.error(`echo worker: invalid configuration: ${err.message}`);
        process.exit(78);
      }
      console.error('echo worker failed to start:', err instanceof Error ? err.message : err);
      process.exit(1);
    });
}
