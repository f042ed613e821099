import type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage, Message, Options } from 'amqplib';
import type { PendingCall, RpcOutcome } from '../rpc/outcome.js';

/**
 * Where replies come back. `direct`: the broker's direct reply-to pseudo-queue (no queue at all).
 * `queue`: an exclusive, auto-delete, server-named callback queue per channel (LavinMQ's article's
 * first pattern), for brokers or policies without direct reply-to.
 */
export type ReplySource = { readonly mode: 'direct'; readonly pseudoQueue: string } | { readonly mode: 'queue' };

/**
 * `shared`: one of the pool's channels, carrying many callers' requests. `probe`: a channel of its
 * own for the first request to an exchange not yet known to take the bridge's messages; if the
 * broker refuses the publish (403: an internal exchange, or no write permission), it closes only
 * this channel, and what was pending on it was refused, not lost.
 */
export type ChannelRole = 'shared' | 'probe';

/** What a passive declare says of an exchange name (the broker closes the channel on 404 and 406). */
export type ExchangeVerdict = 'exists' | 'missing' | 'invalid-name' | 'forbidden';

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
const NOT_FOUND = 404;
const PRECONDITION_FAILED = 406;

export interface ReplyChannelHooks {
  /** A reply whose correlation id nobody waits for (late, duplicate or stray). */
  strayReply(message: ConsumeMessage): void;
  /** A publish filled the channel's write buffer. */
  backpressure(): void;
  /**
   * The channel is gone; its pending calls have already been settled as lost. `brokerCode` is the
   * AMQP reply code when the broker closed the channel on its own (e.g. 404, 406), else undefined.
   */
  closed(channel: ReplyChannel, reason: string, brokerCode: number | undefined): void;
}

/**
 * One AMQP channel that publishes requests and consumes their replies from the direct reply-to
 * pseudo-queue. Direct reply-to delivers a reply only to the channel that published the request, so
 * each channel owns the pending calls it published and settles them all if it dies.
 */
export class ReplyChannel {
  private readonly pending = new Map<string, PendingCall>();
  /**
   * With confirms, a basic.return is final only once its confirm arrives: LavinMQ answers a mandatory
   * message that a full `reject-publish` queue refuses with a return *and then* a nack (RabbitMQ sends
   * only the nack). The return waits here for its ack (unroutable) or nack (refused).
   */
  private readonly returned = new Map<string, Extract<RpcOutcome, { kind: 'unroutable' }>>();
  private writable = true;
  private drainWaiters: Array<{ readonly call: PendingCall; resume(call: PendingCall, channel: ReplyChannel): void }> =
    [];
  private closeReason = 'channel closed';
  /** What requests published here carry in reply_to: the pseudo-queue, or this channel's own queue. */
  replyTo = '';
  private brokerCode: number | undefined;
  private closed = false;
  private compactAt = MIN_COMPACT_AT;
  /** A probe closes itself once nothing is pending on it. */
  private closeWhenIdle = false;

  private constructor(
    private readonly channel: Channel | ConfirmChannel,
    private readonly confirms: boolean,
    private readonly hooks: ReplyChannelHooks,
    private readonly role: ChannelRole,
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
    hooks: ReplyChannelHooks,
    role: ChannelRole = 'shared',
  ): Promise<ReplyChannel> {
    const options = { highWaterMark: PUBLISH_BUFFER_FRAMES };
    const channel = confirms ? await model.createConfirmChannel(options) : await model.createChannel(options);
    const replyChannel = new ReplyChannel(channel, confirms, hooks, role);
    // Listeners first: an 'error' with no listener would be thrown by amqplib and crash the process.
    channel.on('error', (err: Error & { code?: unknown }) => {
      replyChannel.closeReason = err.message;
      if (typeof err.code === 'number') replyChannel.brokerCode = err.code;
    });
    channel.on('close', () => replyChannel.onClose());
    channel.on('return', (message: Message) => replyChannel.onReturn(message));
    channel.on('drain', () => replyChannel.onDrain());
    try {
      if (replies.mode === 'queue') {
        // The callback-queue pattern: a server-named queue of this channel's own, gone with it.
        const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
        replyChannel.replyTo = queue;
      } else {
        replyChannel.replyTo = replies.pseudoQueue;
      }
      // No-ack in both modes: a reply is worth exactly one delivery, and an unacked one is of no use.
      await channel.consume(replyChannel.replyTo, (message) => replyChannel.onReply(message), { noAck: true });
    } catch (err) {
      await replyChannel.close();
      throw err;
    }
    return replyChannel;
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** False after a publish reported a full buffer, until the channel drains. */
  get isWritable(): boolean {
    return this.writable;
  }

  get pendingCount(): number {
    return this.pending.size;
  }

  /** Registers the call, then publishes; throws (with the call unregistered) if amqplib refuses. */
  publish(exchange: string, routingKey: string, body: Buffer, properties: Options.Publish, call: PendingCall): void {
    this.pending.set(call.correlationId, call);
    try {
      const accepted = this.confirms
        ? (this.channel as ConfirmChannel).publish(exchange, routingKey, body, properties, (err: unknown) =>
            this.onConfirm(call, err),
          )
        : this.channel.publish(exchange, routingKey, body, properties);
      if (!accepted) {
        this.writable = false;
        this.hooks.backpressure();
      }
    } catch (err) {
      this.pending.delete(call.correlationId);
      throw err;
    }
  }

  /** The call was settled elsewhere (timeout, client gone): a reply for it is now stray. */
  forget(correlationId: string): void {
    this.pending.delete(correlationId);
    if (this.returned.size > 0) this.returned.delete(correlationId);
    if (this.closeWhenIdle) this.closeIfIdle();
  }

  /**
   * A passive declare on this channel. Also tells whether the publishes before it were accepted:
   * the broker answers a channel's methods in order, so a publish it refuses closes the channel
   * before this answer, and the verdict is then `forbidden`. Rejects for any other failure.
   */
  async checkExchange(exchange: string): Promise<ExchangeVerdict> {
    try {
      await this.channel.checkExchange(exchange);
      return 'exists';
    } catch (err) {
      const code = this.brokerCode ?? (err as { code?: unknown }).code;
      if (code === NOT_FOUND) return 'missing';
      if (code === PRECONDITION_FAILED) return 'invalid-name';
      if (code === ACCESS_REFUSED) return 'forbidden';
      throw err;
    }
  }

  /** Closes the channel as soon as no call is pending on it (a probe whose question is answered). */
  releaseWhenIdle(): void {
    this.closeWhenIdle = true;
    this.closeIfIdle();
  }

  private closeIfIdle(): void {
    if (this.pending.size === 0 && !this.closed) void this.close();
  }

  /**
   * Calls `resume(call, this)` once the channel can take more publishes, or has closed. Waiting
   * calls that settle meanwhile are dropped from the list as it grows, so a channel that never
   * drains holds no more than the calls still in flight.
   */
  waitForDrain<Call extends PendingCall>(call: Call, resume: (call: Call, channel: ReplyChannel) => void): void {
    if (this.writable || this.closed) {
      resume(call, this);
      return;
    }
    if (this.drainWaiters.length >= this.compactAt) {
      this.drainWaiters = this.drainWaiters.filter((waiter) => !waiter.call.isSettled);
      this.compactAt = Math.max(MIN_COMPACT_AT, this.drainWaiters.length * 2);
    }
    this.drainWaiters.push({ call, resume });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      await this.channel.close();
    } catch {
      // Already closing with its connection; the 'close' event settles what is pending.
    }
  }

  private onReply(message: ConsumeMessage | null): void {
    if (message === null) {
      // The broker cancelled our reply consumer: replies can no longer arrive here.
      this.closeReason = 'reply consumer cancelled by broker';
      void this.close();
      return;
    }
    const call = this.take(message.properties.correlationId);
    if (call === undefined) {
      // Late (after a timeout or cancel), duplicate, or not ours: drop it on purpose, never throw.
      this.hooks.strayReply(message);
      return;
    }
    call.settle({ kind: 'reply', message });
  }

  private onReturn(message: Message): void {
    const { correlationId } = message.properties;
    if (typeof correlationId !== 'string' || !this.pending.has(correlationId)) return;
    const fields = message.fields as Message['fields'] & { replyCode?: number; replyText?: string };
    const outcome = {
      kind: 'unroutable',
      replyCode: fields.replyCode ?? 312,
      replyText: fields.replyText ?? 'NO_ROUTE',
    } as const;
    // The broker sends a message's return before its confirm, so the confirm decides.
    if (this.confirms) this.returned.set(correlationId, outcome);
    else this.take(correlationId)?.settle(outcome);
  }

  /**
   * An ack settles a returned call as unroutable and otherwise needs nothing (the reply or timeout
   * settles it); a nack is final either way. amqplib also calls back with an error when the channel
   * closes first: the 'close' handler settles those calls as lost, so only a real nack counts.
   */
  private onConfirm(call: PendingCall, err: unknown): void {
    const nacked = isNack(err);
    if (!nacked && (err != null || this.returned.size === 0)) return;
    const returned = this.returned.get(call.correlationId);
    if (returned !== undefined) this.returned.delete(call.correlationId);
    if (nacked) this.take(call.correlationId)?.settle({ kind: 'nacked' });
    else if (returned !== undefined) this.take(call.correlationId)?.settle(returned);
  }

  /** Removes and returns the call waiting for this correlation id, if any. */
  private take(correlationId: unknown): PendingCall | undefined {
    if (typeof correlationId !== 'string') return undefined;
    const call = this.pending.get(correlationId);
    if (call !== undefined) this.pending.delete(correlationId);
    if (this.closeWhenIdle) this.closeIfIdle();
    return call;
  }

  private onDrain(): void {
    this.writable = true;
    this.releaseDrainWaiters();
  }

  private onClose(): void {
    this.closed = true;
    const lost = [...this.pending.values()];
    this.pending.clear();
    this.returned.clear();
    const reason = this.closeReason;
    // On a probe, a 403 is the broker refusing the probed exchange: those requests were never delivered.
    const outcome: RpcOutcome =
      this.role === 'probe' && this.brokerCode === ACCESS_REFUSED
        ? { kind: 'exchange-forbidden', reason }
        : { kind: 'lost', reason };
    for (const call of lost) call.settle(outcome);
    this.releaseDrainWaiters();
    this.hooks.closed(this, reason, this.brokerCode);
  }

  private releaseDrainWaiters(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    this.compactAt = MIN_COMPACT_AT;
    for (const { call, resume } of waiters) resume(call, this);
  }
}

/** amqplib tells a basic.nack from a closed channel only by the message of the error it passes. */
function isNack(err: unknown): boolean {
  return err instanceof Error && err.message === 'message nacked';
}
