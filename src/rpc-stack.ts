import type { Logger } from 'pino';
import { BrokerConnection, type BrokerConnectionOptions } from './amqp/broker-connection.js';
import { ChannelPool } from './amqp/channel-pool.js';
import { ExchangeChecker } from './amqp/exchange-checker.js';
import { type ReplySource, RpcChannel } from './amqp/rpc-channel.js';
import type { Config } from './config/config.js';
import type { Metrics } from './observability/metrics.js';
import { RpcClient } from './rpc/rpc-client.js';

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

/** One broker connection with its reply channels, exchange checks and the RPC core on top. */
export interface RpcStack {
  readonly connection: BrokerConnection;
  readonly pool: ChannelPool;
  readonly rpc: RpcClient;
}

export interface RpcStackOptions {
  readonly urls: readonly string[];
  readonly connectionName: string;
  readonly channels: number;
  readonly config: Config;
  readonly logger: Logger;
  readonly metrics: Metrics;
  /** See BrokerConnectionOptions: a refused login ends the connection instead of being retried. */
  readonly onLoginRefused?: ((reason: string) => void) | undefined;
  /** See BrokerConnectionOptions: a login given apart from the URLs (a caller's own). */
  readonly credentials?: BrokerConnectionOptions['credentials'];
  /** Connected with every reply channel open (again, after a reconnect): calls can be carried. */
  readonly onReady?: (() => void) | undefined;
  /** See RpcClientOptions: probe the default exchange like any other. */
  readonly checkDefaultExchange?: boolean | undefined;
}

/**
 * Wires the broker side and the RPC core for one broker identity: the bridge's own (bridge.ts), or a
 * caller's (caller-brokers.ts). Nothing connects until `connection.start()`.
 */
export function createRpcStack(options: RpcStackOptions): RpcStack {
  const { config, logger, metrics } = options;
  const connection = new BrokerConnection({
    urls: options.urls,
    reconnectMinMs: config.reconnectMinMs,
    reconnectMaxMs: config.reconnectMaxMs,
    connectionName: options.connectionName,
    connectOrder: config.amqpConnectOrder,
    heartbeatSeconds: config.amqpHeartbeatSeconds,
    logger,
    onLoginRefused: options.onLoginRefused,
    credentials: options.credentials,
  });
  const replies: ReplySource =
    config.replyMode === 'queue' ? { mode: 'queue' } : { mode: 'direct', pseudoQueue: config.replyTo };
  // The RPC core settles calls from what the channels report; the pool carries them.
  const rpc: RpcClient = new RpcClient({
    connection,
    channels: { pick: () => pool.pick() },
    exchanges: new ExchangeChecker({
      connection,
      ttlMs: config.exchangeCheckTtlMs,
      maxConcurrentChecks: EXCHANGE_CHECKS_MAX,
      maxQueuedChecks: EXCHANGE_CHECKS_QUEUED,
      onVerdict: (verdict) => metrics.exchangeChecks.labels(verdict).inc(),
      openProbe: (model) => RpcChannel.open(model, replies, config.publisherConfirms, rpc, 'probe'),
    }),
    appId: config.appId,
    maxInFlight: config.maxInFlight,
    onStrayReply: () => metrics.lateReplies.inc(),
    onBackpressure: () => metrics.publishBackpressure.inc(),
    checkDefaultExchange: options.checkDefaultExchange,
  });
  const pool = new ChannelPool({
    size: options.channels,
    replies,
    confirms: config.publisherConfirms,
    connection,
    logger,
    reopenMinMs: CHANNEL_REOPEN_MIN_MS,
    reopenMaxMs: CHANNEL_REOPEN_MAX_MS,
    events: rpc,
    onBrokerClosedChannel: (code) => metrics.channelCloses.labels(String(code)).inc(),
    onAllOpen: options.onReady,
  });
  connection.addListener({
    connected() {},
    disconnected(reason) {
      logger.warn({ reason }, 'amqp disconnected');
    },
    blockedChanged(blocked) {
      // Neither these requests nor the workers' replies move until the alarm clears. A request
      // already handed to the broker may still be worked on later, as after a timeout.
      if (blocked) rpc.releaseAllBlocked('the broker blocks publishers (resource alarm)');
    },
  });
  return { connection, pool, rpc };
}
