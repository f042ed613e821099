/**
 * A worker that answers in pieces, the way a language model produces tokens: each word of the request's
 * text goes back as its own reply, `INTERVAL_MS` apart, and a last reply carries the whole answer.
 *
 * The stream contract, all of it: publish every reply to the request's `reply_to` with its
 * `correlation_id`; mark each partial one with header `x-stream: more`; the last one has no such header
 * (or `x-stream: end`). A caller with `Accept: text/event-stream` gets one event per reply as it comes;
 * any other caller gets the last reply alone, so make it a whole answer. Stop once `x-deadline`
 * (epoch ms) has passed: nobody reads the rest.
 *
 * Run: AMQP_URL=amqp://guest:guest@127.0.0.1:5672 RPC_QUEUE=words INTERVAL_MS=100 \
 *        node dist/examples/streaming-worker.js
 *      curl -N localhost:8080/rpc/words -H 'Accept: text/event-stream' -d 'one two three'
 */
import { pathToFileURL } from 'node:url';
import amqp, { type Channel, type ConsumeMessage } from 'amqplib';

export interface StreamingWorker {
  close(): Promise<void>;
}

export async function startStreamingWorker(url: string, queue: string, intervalMs: number): Promise<StreamingWorker> {
  // noDelay: each piece is a small write that must not wait for the broker's delayed ACK.
  const connection = await amqp.connect(url, { noDelay: true });
  connection.on('error', (err: Error) => console.error('streaming worker connection error:', err.message));
  const channel = await connection.createChannel();
  channel.on('error', (err: Error) => console.error('streaming worker channel error:', err.message));
  await channel.assertQueue(queue, { durable: false, autoDelete: true });
  await channel.prefetch(16);
  await channel.consume(queue, (message) => {
    if (message === null) return;
    answerInPieces(channel, message, intervalMs)
      .catch((err: unknown) => console.error('streaming worker:', err instanceof Error ? err.message : err))
      .finally(() => channel.ack(message));
  });
  return { close: () => connection.close() };
}

async function answerInPieces(channel: Channel, message: ConsumeMessage, intervalMs: number): Promise<void> {
  const { replyTo, correlationId, headers = {} } = message.properties;
  if (typeof replyTo !== 'string') return;
  const deadline = Number(headers['x-deadline'] ?? 0);
  const text = message.content.toString('utf8');
  const words = text.split(/\s+/).filter((word) => word !== '');
  const reply = (body: string, more: boolean) =>
    channel.sendToQueue(replyTo, Buffer.from(body), {
      correlationId,
      contentType: 'text/plain; charset=utf-8',
      headers: { 'x-stream': more ? 'more' : 'end' },
    });
  for (const word of words) {
    if (deadline > 0 && Date.now() > deadline) return;
    reply(word, true);
    // INTERVAL_MS=0 (the benchmark's firehose): every piece at once, as fast as the channel takes them.
    if (intervalMs > 0) await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  // The whole answer last: what a caller who did not ask for a stream gets.
  reply(words.join(' '), false);
}

const runDirectly = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (runDirectly) {
  const url = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
  const queue = process.env.RPC_QUEUE ?? 'words';
  const intervalMs = Number(process.env.INTERVAL_MS ?? 100);
  startStreamingWorker(url, queue, intervalMs).then(
    (worker) => {
      console.log(`streaming worker consuming "${queue}", a piece every ${intervalMs} ms`);
      const stop = () => void worker.close().finally(() => process.exit(0));
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
    },
    (err: unknown) => {
      console.error('streaming worker failed to start:', err instanceof Error ? err.message : err);
      process.exit(1);
    },
  );
}
