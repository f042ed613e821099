import type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage, Message, Options } from 'amqplib';
import type { Reply } from '../rpc/outcome.js';
import type { ChannelEvents, ChannelRole, ExchangeVerdict, PublishChannel } from '../rpc/ports.js';
import { undecodableReason } from './undecodable-properties.js';
import { type HoldWrites, holdWritesOf } from './write-batching.js';

/**
 * Where replies come back. `direct`: the broker's direct reply-to pseudo-queue (no queue at all).
 * `queue`: an exclusive, auto-delete, server-named callback queue per channel (LavinMQ's article's
 * first pattern), for brokers or policies without direct reply-to.
 */
export type ReplySource = { readonly mode: 'direct'; readonly pseudoQueue: string } | { readonly mode: 'queue' };

/** Something waiting for a channel to drain; dropped from the list once it has settled elsewhere. */
export interface DrainWaiter {
  readonly isSettled: boolean;
}

/**
 * Frames a channel buffers before publish reports backpressure. amqplib's default is 1,024: with
 * 64 KiB bodies, four channels would hold ~130 MB for a socket that stopped draining (a silent
 * broker) before any request waited. At 32, a stalled socket holds a few MB, and a healthy one
 * never fills it with small messages.
 */
const PUBLISH_BUFFER_FRAMES = 32;
/** Waiting calls are filtered for settled ones whenever the list doubles past this. */
const MIN_COMPACT_AT = 64;
const ACCESS_REFUSED = 403;
export const NOT_FOUND = 404;
const PRECONDITION_FAILED = 406;

/**
 * One AMQP channel that publishes requests and consumes their replies. Direct reply-to delivers a
 * reply only to the channel that published the request, so a channel's replies, returns, confirms
 * and its own death are reported to the owner, who settles the calls that were on it.
 */
export class RpcChannel implements PublishChannel {
  /**
   * With confirms, a basic.return is final only once its confirm arrives: LavinMQ answers a mandatory
   * message that a full `reject-publish` queue refuses with a return *and then* a nack (RabbitMQ sends
   * only the nack). The return waits here for its ack (returned) or nack (refused).
   */
  private readonly returnsAwaitingConfirm = new Map<string, { replyCode: number; replyText: string }>();
  private writable = true;
  private drainWaiters: Array<{
    readonly waiter: DrainWaiter;
    resume(waiter: DrainWaiter, channel: PublishChannel): void;
  }> = [];
  private compactAt = MIN_COMPACT_AT;
  /** Why it closed (the broker's words, when the broker closed it). */
  closeReason = 'channel closed';
  /** The AMQP reply code, when the broker closed it. */
  brokerCode: number | undefined;
  private closed = false;
  private holders = 0;
  /** What requests published here carry in reply_to: the pseudo-queue, or this channel's own queue. */
  replyTo = '';

  private constructor(
    private readonly channel: Channel | ConfirmChannel,
    readonly confirms: boolean,
    private readonly events: ChannelEvents,
    readonly role: ChannelRole,
    private readonly onClosed: ((channel: RpcChannel) => void) | undefined,
    private readonly holdWrites: HoldWrites,
  ) {}

  /**
   * Opens a channel and starts its reply consumer. Resolves only after the broker's consume-ok:
   * publishing with reply_to before that is refused by the broker with a channel error. With
   * `confirms`, the channel is in confirm mode, so a message the broker refuses (a full queue with
   * `x-overflow: reject-publish`) comes back as basic.nack instead of silence until the timeout.
   */
  static async open(
    model: ChannelModel,
    replies: ReplySource,
    confirms: boolean,
    events: ChannelEvents,
    role: ChannelRole,
    /** The owner's own bookkeeping (the pool replaces the channel), after `events.closed`. */
    onClosed?: (channel: RpcChannel) => void,
  ): Promise<RpcChannel> {
    const options = { highWaterMark: PUBLISH_BUFFER_FRAMES };
    const channel = confirms ? await model.createConfirmChannel(options) : await model.createChannel(options);
    const rpcChannel = new RpcChannel(channel, confirms, events, role, onClosed, holdWritesOf(model));
    // Listeners first: an 'error' with no listener would be thrown by amqplib and crash the process.
    channel.on('error', (err: Error & { code?: unknown }) => {
      rpcChannel.closeReason = err.message;
      if (typeof err.code === 'number') rpcChannel.brokerCode = err.code;
    });
    channel.on('close', () => rpcChannel.onClose());
    channel.on('return', (message: Message) => rpcChannel.onReturn(message));
    channel.on('drain', () => rpcChannel.onDrain());
    try {
      if (replies.mode === 'queue') {
        // The callback-queue pattern: a server-named queue of this channel's own, gone with it.
        const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
        rpcChannel.replyTo = queue;
      } else {
        rpcChannel.replyTo = replies.pseudoQueue;
      }
      // No-ack in both modes: a reply is worth exactly one delivery, and an unacked one is of no use.
      await channel.consume(rpcChannel.replyTo, (message) => rpcChannel.onReply(message), { noAck: true });
    } catch (err) {
      await rpcChannel.close();
      throw err;
    }
    return rpcChannel;
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** False after a publish reported a full buffer, until the channel drains. */
  get isWritable(): boolean {
    return this.writable;
  }

  /**
   * Publishes; throws if amqplib refuses. Its return, nack or loss is reported by correlation id, and
   * with `reportAck` its ack too.
   */
  publish(
    exchange: string,
    routingKey: string,
    body: Buffer,
    properties: Options.Publish & { correlationId: string },
    reportAck: boolean,
  ): void {
    const { correlationId } = properties;
    const accepted = this.confirms
      ? (this.channel as ConfirmChannel).publish(exchange, routingKey, body, properties, (err: unknown) =>
          this.onConfirm(correlationId, err, reportAck),
        )
      : this.channel.publish(exchange, routingKey, body, properties);
    // After the publish: its frames have scheduled amqplib's move to the socket, which must come first.
    this.holdWrites();
    if (!accepted) {
      this.writable = false;
      this.events.backpressure();
    }
  }

  /**
   * Calls `resume(waiter, this)` once the channel can take more publishes, or has closed. Waiters
   * that settle meanwhile are dropped from the list as it grows, so a channel that never drains
   * holds no more of them than are still in flight.
   */
  waitForDrain<Waiter extends DrainWaiter>(
    waiter: Waiter,
    resume: (waiter: Waiter, channel: PublishChannel) => void,
  ): void {
    if (this.writable || this.closed) {
      resume(waiter, this);
      return;
    }
    if (this.drainWaiters.length >= this.compactAt) {
      this.drainWaiters = this.drainWaiters.filter((entry) => !entry.waiter.isSettled);
      this.compactAt = Math.max(MIN_COMPACT_AT, this.drainWaiters.length * 2);
    }
    this.drainWaiters.push({ waiter, resume: resume as (waiter: DrainWaiter, channel: PublishChannel) => void });
  }

  /**
   * A passive declare on this channel. Also tells whether the publishes before it were accepted:
   * the broker answers a channel's methods in order, so a publish it refuses closes the channel
   * before this answer, and the verdict is then `forbidden`. Rejects for any other failure.
   */
  async checkExchange(exchange: string): Promise<ExchangeVerdict> {
    try {
      // The default exchange always exists and may not be declared, even passively; any round trip
      // (here basic.qos, which changes nothing for a no-ack consumer) still orders after the publishes.
      if (exchange === '') await this.channel.prefetch(0);
      else await this.channel.checkExchange(exchange);
      return 'exists';
    } catch (err) {
      const code = this.brokerCode ?? (err as { code?: unknown }).code;
      if (code === NOT_FOUND) return 'missing';
      if (code === PRECONDITION_FAILED) return 'invalid-name';
      if (code === ACCESS_REFUSED) return 'forbidden';
      throw err;
    }
  }

  /** A probe is used by its exchange check and by the request it carries; the last to finish closes it. */
  hold(): void {
    this.holders += 1;
  }

  release(): void {
    this.holders -= 1;
    if (this.holders <= 0) void this.close();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      await this.channel.close();
    } catch {
      // Already closing with its connection; the 'close' event reports it.
    }
  }

  private onReply(message: ConsumeMessage | null): void {
    if (message === null) {
      // The broker cancelled our reply consumer: replies can no longer arrive here.
      this.closeReason = 'reply consumer cancelled by broker';
      void this.close();
      return;
    }
    this.events.reply(this, message.properties.correlationId, replyOf(message));
  }

  private onReturn(message: Message): void {
    const { correlationId } = message.properties;
    if (typeof correlationId !== 'string') return;
    const fields = message.fields as Message['fields'] & { replyCode?: number; replyText?: string };
    const replyCode = fields.replyCode ?? 312;
    const replyText = fields.replyText ?? 'NO_ROUTE';
    // The broker sends a message's return before its confirm, so the confirm decides.
    if (this.confirms) this.returnsAwaitingConfirm.set(correlationId, { replyCode, replyText });
    else this.events.returned(correlationId, replyCode, replyText);
  }

  /**
   * An ack makes a return final and otherwise needs nothing (the reply or the timeout settles the
   * call); a nack is final either way. amqplib also calls back with an error when the channel closes
   * first: the close is reported on its own, so only a real nack counts.
   */
  private onConfirm(correlationId: string, err: unknown, reportAck: boolean): void {
    const nacked = isNack(err);
    if (!nacked && err != null) return;
    if (!nacked && !reportAck && this.returnsAwaitingConfirm.size === 0) return;
    const returned = this.returnsAwaitingConfirm.get(correlationId);
    if (returned !== undefined) this.returnsAwaitingConfirm.delete(correlationId);
    if (nacked) this.events.nacked(correlationId);
    else if (returned !== undefined) this.events.returned(correlationId, returned.replyCode, returned.replyText);
    else if (reportAck) this.events.confirmed(correlationId);
  }

  private onDrain(): void {
    this.writable = true;
    this.releaseDrainWaiters();
  }

  private onClose(): void {
    this.closed = true;
    this.returnsAwaitingConfirm.clear();
    this.events.closed(this, this.closeReason, this.brokerCode);
    this.onClosed?.(this);
    this.releaseDrainWaiters();
  }

  private releaseDrainWaiters(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    this.compactAt = MIN_COMPACT_AT;
    for (const { waiter, resume } of waiters) resume(waiter, this);
  }
}

/** amqplib tells a basic.nack from a closed channel only by the message of the error it passes. */
export function isNack(err: unknown): boolean {
  return err instanceof Error && err.message === 'message nacked';
}

/** A delivered message as the reply it is (a direct reply, or one read from a deferred call's queue). */
export function replyOf(message: Message): Reply {
  const { properties } = message;
  return {
    body: message.content,
    contentType: properties.contentType,
    contentEncoding: properties.contentEncoding,
    headers: properties.headers ?? {},
    undecodable: undecodableReason(properties),
  };
}
