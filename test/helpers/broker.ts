import { randomBytes } from 'node:crypto';
import amqp, { type Channel, type ChannelModel, type ConsumeMessage } from 'amqplib';

export const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';

/** Every test owns its queue and exchange names. */
export function uniqueName(prefix: string): string {
  return `test.${prefix}.${randomBytes(6).toString('hex')}`;
}

export interface TestBroker {
  readonly connection: ChannelModel;
  readonly channel: Channel;
  close(): Promise<void>;
}

/** A plain connection for arranging things on the broker (queues, exchanges, misbehaving workers). */
export async function connectTestBroker(): Promise<TestBroker> {
  const connection = await amqp.connect(AMQP_URL, { noDelay: true });
  connection.on('error', () => undefined);
  const channel = await connection.createChannel();
  channel.on('error', () => undefined);
  return {
    connection,
    channel,
    async close() {
      await connection.close().catch(() => undefined);
    },
  };
}

/** Publishes to the request's reply_to with its correlation id (unless options name another, or `anonymous`). */
export type ReplyFn = (content: Buffer, options: amqp.Options.Publish, anonymous?: 'without-correlation-id') => void;

/**
 * A worker the test controls completely: `handle` receives each request and a `reply` function
 * that publishes to its reply_to (as many times as the test likes, whenever it likes).
 */
export async function startRawWorker(
  broker: TestBroker,
  queue: string,
  handle: (message: ConsumeMessage, reply: ReplyFn) => void,
): Promise<void> {
  const channel = await broker.connection.createChannel();
  channel.on('error', () => undefined);
  await channel.assertQueue(queue, { durable: false, autoDelete: true });
  await channel.consume(
    queue,
    (message) => {
      if (message === null) return;
      const reply: ReplyFn = (content, options, anonymous) => {
        const properties = anonymous ? options : { correlationId: message.properties.correlationId, ...options };
        try {
          channel.sendToQueue(String(message.properties.replyTo), content, properties);
        } catch {
          // The test is over and its connection closed before this (delayed) reply: nobody waits for it.
        }
      };
      handle(message, reply);
    },
    { noAck: true },
  );
}
