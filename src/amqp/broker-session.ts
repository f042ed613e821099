import type { ChannelModel } from 'amqplib';
import type { Logger } from 'pino';
import type { Reply } from '../rpc/outcome.js';
import type {
  ChannelEvents,
  ExchangeVerdict,
  PublishChannel,
  RpcSession,
  SessionEvents,
  SessionLifecycle,
  SessionListener,
} from '../rpc/ports.js';
import { BrokerConnection, type BrokerConnectionOptions, type ConnectionListener } from './broker-connection.js';
import { ChannelPool } from './channel-pool.js';
import { ExchangeChecker } from './exchange-checker.js';
import { AmqpResultStore } from './result-store.js';
import { type ReplySource, RpcChannel } from './rpc-channel.js';

/** Channels that fail to reopen are retried within these bounds, independent of connection backoff. */
const CHANNEL_REOPEN_MIN_MS = 50;
const CHANNEL_REOPEN_MAX_MS = 5_000;
/**
 * Exchange probes under way at once (each holds a channel for a moment): far below any broker's
 * channel limit, so distinct exchange names cannot exhaust the connection's channels.
 */
const EXCHANGE_CHECKS_MAX = 32;
/** Checks waiting for a turn: a flood of unknown names waits (~1-3 ms a probe, 32 at once) rather than refusing others at once. */
const EXCHANGE_CHECKS_QUEUED = 1_024;

export interface BrokerSessionOptions {
  /** How to reach the broker and as whom. `onLoginRefused` is the session's own (a listener hears it). */
  readonly connection: Omit<BrokerConnectionOptions, 'logger' | 'onLoginRefused'>;
  /** A refused login ends the session instead of being retried (a caller's own credentials). */
  readonly loginRefusedIsFinal: boolean;
  readonly channels: number;
  readonly replies: ReplySource;
  /** Publisher confirms on every channel. */
  readonly confirms: boolean;
  /** How long an exchange check's answer is kept. */
  readonly exchangeCheckTtlMs: number;
  /** Each exchange and routing key is checked on its own (topic permissions), not each exchange. */
  readonly exchangeCheckByRoutingKey: boolean;
  readonly logger: Logger;
}

/**
 * One broker identity's session: its connection, its reply channels and its exchange checks, created
 * whole and started once. The RPC core binds to it (its channels' events go to the core) and drives it
 * through the ports it implements; its owner watches it through typed listeners and `whenReady()`.
 */
export class BrokerSession implements RpcSession, SessionLifecycle, ConnectionListener {
  private readonly connection: BrokerConnection;
  private readonly pool: ChannelPool;
  private readonly exchanges: ExchangeChecker;
  private readonly listeners: SessionListener[] = [];
  private readyWaiters: Array<() => void> = [];
  private core: SessionEvents | undefined;
  /** Asynchronous calls' and idempotency keys' queues, on this session's connection. */
  readonly results: AmqpResultStore;

  /**
   * What the channels report goes to the core bound to this session. The channels exist only after
   * `start()`, which needs a bound core, so nothing is ever reported to nobody.
   */
  private readonly relay: ChannelEvents = {
    reply: (channel: PublishChannel, correlationId: unknown, reply: Reply) =>
      this.bound.reply(channel, correlationId, reply),
    returned: (correlationId, replyCode, replyText) => this.bound.returned(correlationId, replyCode, replyText),
    nacked: (correlationId) => this.bound.nacked(correlationId),
    confirmed: (correlationId) => this.bound.confirmed(correlationId),
    backpressure: () => this.bound.backpressure(),
    closed: (channel, reason, brokerCode) => this.bound.closed(channel, reason, brokerCode),
  };

  constructor(options: BrokerSessionOptions) {
    const { logger } = options;
    this.connection = new BrokerConnection({
      ...options.connection,
      logger,
      onLoginRefused: options.loginRefusedIsFinal
        ? (reason) => this.emit((listener) => listener.loginRefused?.(reason))
        : undefined,
    });
    const model = () => this.connection.current;
    this.results = new AmqpResultStore(model);
    this.pool = new ChannelPool({
      size: options.channels,
      replies: options.replies,
      confirms: options.confirms,
      model,
      logger,
      reopenMinMs: CHANNEL_REOPEN_MIN_MS,
      reopenMaxMs: CHANNEL_REOPEN_MAX_MS,
      events: this.relay,
      onBrokerClosedChannel: (code) => this.emit((listener) => listener.channelClosedByBroker?.(code)),
      onAllOpen: () => this.becameReady(),
    });
    this.exchanges = new ExchangeChecker({
      model,
      ttlMs: options.exchangeCheckTtlMs,
      byRoutingKey: options.exchangeCheckByRoutingKey,
      maxConcurrentChecks: EXCHANGE_CHECKS_MAX,
      maxQueuedChecks: EXCHANGE_CHECKS_QUEUED,
      onVerdict: (verdict: ExchangeVerdict) => this.emit((listener) => listener.exchangeVerdict?.(verdict)),
      openProbe: (channelModel: ChannelModel) =>
        RpcChannel.open(channelModel, options.replies, options.confirms, this.relay, 'probe'),
    });
    this.connection.addListener(this);
  }

  // The ports the core drives (RpcSession).

  bind(core: SessionEvents): void {
    if (this.core !== undefined) throw new Error('a session carries one core');
    this.core = core;
  }

  get isConnected(): boolean {
    return this.connection.isConnected;
  }

  get isBlocked(): boolean {
    return this.connection.isBlocked;
  }

  retryAfterMs(): number {
    return this.connection.retryAfterMs();
  }

  pick(): PublishChannel | undefined {
    return this.pool.pick();
  }

  cached(exchange: string, routingKey: string): ExchangeVerdict | undefined {
    return this.exchanges.cached(exchange, routingKey);
  }

  check(
    exchange: string,
    routingKey: string,
    publishFirst: (probe: PublishChannel) => boolean,
  ): Promise<ExchangeVerdict> {
    return this.exchanges.check(exchange, routingKey, publishFirst);
  }

  // Its life, as its owner sees it (SessionLifecycle).

  get isReady(): boolean {
    return this.connection.isConnected && this.pool.allOpen;
  }

  /** Every reply channel is open (whether or not the connection is: for the readiness checks). */
  get allChannelsOpen(): boolean {
    return this.pool.allOpen;
  }

  addListener(listener: SessionListener): void {
    this.listeners.push(listener);
  }

  /** Resolves once connected with every reply channel open (at once if it is). */
  whenReady(): Promise<void> {
    if (this.isReady) return Promise.resolve();
    return new Promise((resolve) => this.readyWaiters.push(resolve));
  }

  start(): void {
    if (this.core === undefined) throw new Error('bind the RPC core before starting its session');
    this.connection.start();
  }

  async stop(): Promise<void> {
    await this.pool.stop();
    await this.connection.stop();
  }

  // What the connection tells it (ConnectionListener).

  connected(model: ChannelModel): void {
    this.pool.open(model);
    this.emit((listener) => listener.connected?.());
  }

  disconnected(reason: string): void {
    this.pool.forgetAll();
    this.exchanges.forgetAll();
    this.emit((listener) => listener.disconnected?.(reason));
  }

  blockedChanged(blocked: boolean): void {
    // Neither requests nor the workers' replies move until the alarm clears.
    if (blocked) this.bound.publishersBlocked();
    this.emit((listener) => listener.blockedChanged?.(blocked));
  }

  private becameReady(): void {
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const resolve of waiters) resolve();
    this.emit((listener) => listener.ready?.());
  }

  private emit(event: (listener: SessionListener) => void): void {
    for (const listener of this.listeners) event(listener);
  }

  private get bound(): SessionEvents {
    if (this.core === undefined) throw new Error('no RPC core is bound to this session');
    return this.core;
  }
}
