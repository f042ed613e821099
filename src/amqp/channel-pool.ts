import type { ChannelModel } from 'amqplib';
import type { Logger } from 'pino';
import { toError } from '../errors.js';
import type { ChannelEvents, ChannelSource } from '../rpc/ports.js';
import { reconnectDelay } from './backoff.js';
import { type ReplySource, RpcChannel } from './rpc-channel.js';

export interface ChannelPoolOptions {
  readonly size: number;
  readonly replies: ReplySource;
  /** Open the channels in confirm mode (publisher confirms). */
  readonly confirms: boolean;
  /** The connection's channel model now: a channel opened for an older one is closed at once. */
  readonly model: () => ChannelModel | undefined;
  readonly logger: Logger;
  readonly reopenMinMs: number;
  readonly reopenMaxMs: number;
  /** Who hears each channel's replies, returns, confirms and closes (the RPC core). */
  readonly events: ChannelEvents;
  /** A channel the broker closed while the connection stayed up, with the AMQP reply code. */
  readonly onBrokerClosedChannel: (brokerCode: number) => void;
  /** Every channel is open with its reply consumer (again, after a reconnect): calls can be carried. */
  readonly onAllOpen: () => void;
}

/**
 * A fixed number of reply channels on the current connection. A channel that dies is replaced (with
 * its reply consumer running before it takes traffic); a new connection gets a whole new set.
 */
export class ChannelPool implements ChannelSource {
  private channels: RpcChannel[] = [];
  private cursor = 0;
  /** Bumped on every connect/disconnect so that slow opens from an old connection are discarded. */
  private generation = 0;
  private stopped = false;

  constructor(private readonly options: ChannelPoolOptions) {}

  /** True when every configured channel is open with its reply consumer active. */
  get allOpen(): boolean {
    return this.channels.length === this.options.size;
  }

  /** Next channel in turn, preferring one whose write buffer is not full; undefined when none is open. */
  pick(): RpcChannel | undefined {
    const count = this.channels.length;
    if (count === 0) return undefined;
    for (let tried = 0; tried < count; tried++) {
      this.cursor = (this.cursor + 1) % count;
      const channel = this.channels[this.cursor];
      if (channel?.isWritable) return channel;
    }
    return this.channels[this.cursor];
  }

  /** A new connection: a whole new set of channels on it. */
  open(model: ChannelModel): void {
    this.generation += 1;
    this.channels = [];
    for (let slot = 0; slot < this.options.size; slot++) void this.openSlot(model, this.generation, 0);
  }

  /** The connection is gone; each channel's own 'close' (amqplib emits it before the connection's) was reported. */
  forgetAll(): void {
    this.generation += 1;
    this.channels = [];
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.generation += 1;
    const channels = this.channels;
    this.channels = [];
    await Promise.all(channels.map((channel) => channel.close()));
  }

  private async openSlot(model: ChannelModel, generation: number, failures: number): Promise<void> {
    if (this.isStale(model, generation)) return;
    try {
      const { events, replies, confirms } = this.options;
      const channel = await RpcChannel.open(model, replies, confirms, events, 'shared', (closed) =>
        this.onChannelClosed(closed, model, generation),
      );
      if (this.isStale(model, generation)) {
        await channel.close();
        return;
      }
      this.channels.push(channel);
      if (this.allOpen) this.options.onAllOpen();
    } catch (err) {
      if (this.isStale(model, generation)) return;
      this.options.logger.warn({ err: toError(err).message }, 'could not open reply channel');
      this.reopenLater(model, generation, failures + 1);
    }
  }

  private onChannelClosed(channel: RpcChannel, model: ChannelModel, generation: number): void {
    const index = this.channels.indexOf(channel);
    if (index === -1) return;
    this.channels.splice(index, 1);
    if (channel.brokerCode !== undefined) this.options.onBrokerClosedChannel(channel.brokerCode);
    if (this.isStale(model, generation)) return;
    this.options.logger.warn({ reason: channel.closeReason }, 'reply channel closed; reopening');
    this.reopenLater(model, generation, 1);
  }

  private reopenLater(model: ChannelModel, generation: number, failures: number): void {
    const delay = reconnectDelay(failures, this.options.reopenMinMs, this.options.reopenMaxMs);
    setTimeout(() => void this.openSlot(model, generation, failures), delay).unref();
  }

  private isStale(model: ChannelModel, generation: number): boolean {
    return this.stopped || generation !== this.generation || this.options.model() !== model;
  }
}
