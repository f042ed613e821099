import type { Channel, ChannelModel, ConfirmChannel, Message } from 'amqplib';
import { isPartialReply, type Reply } from '../rpc/outcome.js';
import { BrokerNotConnected, type KeyClaim, type ResultStore, type StoredResult } from '../rpc/ports.js';
import { isNack, NOT_FOUND, replyOf } from './rpc-channel.js';

/**
 * Result queues and idempotency claims on the broker (the core's ResultStore). What may name a queue
 * that is gone (a read, a delete) runs on a channel of its own, opened for it and closed after: a queue
 * that has expired or was deleted makes the broker close the channel that asked (404), and that must
 * never be a channel other requests share. Closing that channel is also what puts a read reply back in
 * its queue (it was never acked), so the next read finds it again. Declares and publishes, which no
 * missing queue can fail, share one confirm channel (a channel's open and close are two round trips).
 */
export class AmqpResultStore implements ResultStore {
  private shared: Promise<ConfirmChannel> | undefined;

  constructor(private readonly model: () => ChannelModel | undefined) {}

  async create(queue: string, ttlMs: number): Promise<void> {
    const channel = await this.sharedChannel();
    await channel.assertQueue(queue, { durable: true, arguments: { 'x-expires': ttlMs, 'x-message-ttl': ttlMs } });
  }

  read(queue: string, waitMs: number, signal?: AbortSignal): Promise<StoredResult> {
    return this.on(async (channel): Promise<StoredResult> => {
      try {
        if (waitMs <= 0) return await getFinal(channel, queue);
        return await waitForOne(channel, queue, waitMs, signal);
      } catch (err) {
        if (codeOf(err) === NOT_FOUND) return { kind: 'unknown' };
        throw err;
      }
    });
  }

  async put(queue: string, result: Reply): Promise<void> {
    await publishConfirmed(await this.sharedChannel(), queue, result.body, {
      ...(result.contentType === undefined ? {} : { contentType: result.contentType }),
      ...(result.contentEncoding === undefined ? {} : { contentEncoding: result.contentEncoding }),
      headers: result.headers,
      deliveryMode: 2,
    });
  }

  remove(queue: string): Promise<boolean> {
    return this.on(async (channel) => {
      try {
        await channel.checkQueue(queue);
      } catch (err) {
        if (codeOf(err) === NOT_FOUND) return false;
        throw err;
      }
      await channel.deleteQueue(queue);
      return true;
    });
  }

  async claim(queue: string, ttlMs: number): Promise<KeyClaim> {
    const channel = await this.sharedChannel();
    await channel.assertQueue(queue, {
      durable: true,
      // One message, and a second refused (basic.nack) rather than dropping the first: the claim.
      arguments: { 'x-max-length': 1, 'x-overflow': 'reject-publish', 'x-expires': ttlMs, 'x-message-ttl': ttlMs },
    });
    return (await publishConfirmed(channel, queue, Buffer.alloc(0), { deliveryMode: 2 })) ? 'claimed' : 'taken';
  }

  /** The channel declares and publishes share; a new one after it closed (with its connection, or a 406). */
  private sharedChannel(): Promise<ConfirmChannel> {
    this.shared ??= this.openChannel(true).then(
      (channel) => {
        channel.once('close', () => {
          this.shared = undefined;
        });
        return channel;
      },
      (err: unknown) => {
        this.shared = undefined;
        throw err;
      },
    );
    return this.shared;
  }

  private async openChannel(confirms: boolean): Promise<ConfirmChannel> {
    const model = this.model();
    if (model === undefined) throw new BrokerNotConnected('not connected to the broker');
    const channel = (confirms ? await model.createConfirmChannel() : await model.createChannel()) as ConfirmChannel;
    // An 'error' with no listener would be thrown by amqplib and crash the process; the operation's
    // own promise rejects with the same error.
    channel.on('error', () => {});
    return channel;
  }

  /** Runs `work` on a channel of its own, closed afterwards whatever happened. */
  private async on<T>(work: (channel: Channel) => Promise<T>): Promise<T> {
    const channel = await this.openChannel(false);
    try {
      return await work(channel);
    } finally {
      channel.close().catch(() => {
        // Already closed by the broker (404) or with its connection.
      });
    }
  }
}

function asStored(message: Message | false): StoredResult {
  return message === false ? { kind: 'empty' } : { kind: 'reply', reply: replyOf(message) };
}

/**
 * A deferred call is answered once: by its worker's final reply. Partial replies (`x-stream: more`) of a
 * streaming worker ahead of it are acked, so they leave the queue and the final one comes next.
 */
async function getFinal(channel: Channel, queue: string): Promise<StoredResult> {
  for (;;) {
    const message = await channel.get(queue, { noAck: false });
    if (message === false) return { kind: 'empty' };
    if (!isPartialReply(message.properties.headers)) return asStored(message);
    channel.ack(message);
  }
}

/** Consumes until the first reply, the wait's end, the caller's leaving or the queue's deletion. */
async function waitForOne(
  channel: Channel,
  queue: string,
  waitMs: number,
  signal?: AbortSignal,
): Promise<StoredResult> {
  let settle!: (result: StoredResult) => void;
  let fail!: (err: Error) => void;
  const outcome = new Promise<StoredResult>((resolve, reject) => {
    settle = resolve;
    fail = reject;
  });
  // Nobody awaits it when consume itself failed (404): that rejection must not go unhandled.
  outcome.catch(() => undefined);
  const timer = setTimeout(() => settle({ kind: 'empty' }), waitMs);
  const gaveUp = () => settle({ kind: 'empty' });
  signal?.addEventListener('abort', gaveUp, { once: true });
  // The connection went (a broker restart, the bridge stopping): nothing more can arrive on this channel.
  channel.once('close', () => fail(new Error('the channel closed while waiting for the reply')));
  try {
    await channel.prefetch(1);
    // Not acked: closing the channel puts the reply back for the next read.
    await channel.consume(
      queue,
      (message) => {
        if (message === null) settle({ kind: 'unknown' });
        else if (isPartialReply(message.properties.headers)) channel.ack(message);
        else settle(asStored(message));
      },
      { noAck: false },
    );
    return await outcome;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', gaveUp);
  }
}

function publishConfirmed(
  channel: ConfirmChannel,
  queue: string,
  body: Buffer,
  properties: Parameters<ConfirmChannel['publish']>[3],
): Promise<boolean> {
  return new Promise((resolve, reject) => {
    channel.publish('', queue, body, properties, (err: unknown) => {
      if (err == null) resolve(true);
      else if (isNack(err)) resolve(false);
      else reject(err);
    });
  });
}

function codeOf(err: unknown): unknown {
  return typeof err === 'object' && err !== null && 'code' in err ? err.code : undefined;
}
