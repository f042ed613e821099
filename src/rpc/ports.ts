import type { Options } from 'amqplib';
import type { Reply } from './outcome.js';

/**
 * What the RPC core needs of the broker side, declared once, here: the amqp/ classes implement these
 * (`implements`), bridge.ts hands them over, and the core's own tests drive the core with small fakes
 * of them (the broker decides nothing there).
 */

/** The connection's state, for refusing at once (503) instead of publishing into nothing. */
export interface BrokerState {
  readonly isConnected: boolean;
  readonly isBlocked: boolean;
  /** Milliseconds until the next connection attempt, for Retry-After. */
  retryAfterMs(): number;
}

/**
 * `shared`: one of the session's channels, carrying many callers' requests. `probe`: a channel of its
 * own for the first request to an exchange not yet known to take the bridge's messages; if the broker
 * refuses the publish (403), it closes only that channel.
 */
export type ChannelRole = 'shared' | 'probe';

/** A channel that publishes requests and reports what becomes of them by correlation id. */
export interface PublishChannel {
  readonly role: ChannelRole;
  readonly replyTo: string;
  readonly isOpen: boolean;
  readonly isWritable: boolean;
  /** Confirms on: a publish's ack can be reported (`confirmed`), and a return waits for it. */
  readonly confirms: boolean;
  /**
   * Throws when the channel refuses the message outright. `reportAck`: report the broker's ack of
   * this message (a publish waits for it; an RPC waits for its reply instead).
   */
  publish(
    exchange: string,
    routingKey: string,
    body: Buffer,
    properties: Options.Publish & { correlationId: string },
    reportAck: boolean,
  ): void;
  /** Calls `resume` once the channel can take more publishes, or has closed. */
  waitForDrain<Waiter extends { readonly isSettled: boolean }>(
    waiter: Waiter,
    resume: (waiter: Waiter, channel: PublishChannel) => void,
  ): void;
  /** A probe is held by its exchange check and by the request it carries; the last release closes it. */
  hold(): void;
  release(): void;
}

/** The reply channels that carry requests: the next one in turn, or undefined when none is open. */
export interface ChannelSource {
  pick(): PublishChannel | undefined;
}

/** What a passive declare says of an exchange name (the broker closes the channel on 404 and 406). */
export type ExchangeVerdict = 'exists' | 'missing' | 'invalid-name' | 'forbidden';

/** The broker connection is down: the store could neither keep nor read anything. */
export class BrokerNotConnected extends Error {
  override name = 'BrokerNotConnected';
}

/** Too many exchange checks under way and waiting: the request was not published. */
export class ExchangeChecksExhausted extends Error {
  override name = 'ExchangeChecksExhausted';
}

/** May the bridge publish to this exchange? (The default exchange is asked about only for callers' own users.) */
export interface ExchangeGate {
  /** The answer if it is known and fresh (for the exchange, or for the key too where keys are checked). */
  cached(exchange: string, routingKey: string): ExchangeVerdict | undefined;
  /**
   * Asks the broker. `publishFirst` publishes the request that asked on the probe channel, and says
   * whether it did. Rejects with ExchangeChecksExhausted when too many checks are under way and waiting.
   */
  check(
    exchange: string,
    routingKey: string,
    publishFirst: (probe: PublishChannel) => boolean,
  ): Promise<ExchangeVerdict>;
}

/**
 * What a session's channels report, keyed by correlation id: the channels keep no request of their
 * own. The core knows which calls are waiting and settles them.
 */
export interface ChannelEvents {
  /** A reply arrived on this channel; the id is whatever the worker sent (maybe none). */
  reply(channel: PublishChannel, correlationId: unknown, reply: Reply): void;
  /** The broker returned a mandatory message (with confirms: once its confirm has arrived). */
  returned(correlationId: string, replyCode: number, replyText: string): void;
  /** The broker refused the message (basic.nack). */
  nacked(correlationId: string): void;
  /** The broker took a message published with `reportAck` (basic.ack, and no return before it). */
  confirmed(correlationId: string): void;
  /** A publish filled the channel's write buffer. */
  backpressure(): void;
  /** The channel is gone. `brokerCode`: the AMQP reply code when the broker closed it (e.g. 403, 404). */
  closed(channel: PublishChannel, reason: string, brokerCode: number | undefined): void;
}

/** The core's side of a session: its channels' events, and the broker blocking publishers. */
export interface SessionEvents extends ChannelEvents {
  /** A resource alarm: nothing moves until it clears. */
  publishersBlocked(): void;
}

/** One broker identity's connection, channels and exchange checks, as the core drives it. */
export interface RpcSession extends BrokerState, ChannelSource, ExchangeGate {
  /** The core that hears the session's events; bound once, before the session starts. */
  bind(core: SessionEvents): void;
}

/** What a session's owner may watch; every method is optional, so nobody writes empty stubs. */
export interface SessionListener {
  connected?(): void;
  disconnected?(reason: string): void;
  blockedChanged?(blocked: boolean): void;
  /** Connected with every reply channel open (again, after a reconnect): calls can be carried. */
  ready?(): void;
  /** The broker refused the login (a caller's own credentials): the session has stopped for good. */
  loginRefused?(reason: string): void;
  /** A channel the broker closed while the connection stayed up, with the AMQP reply code. */
  channelClosedByBroker?(brokerCode: number): void;
  /** Each exchange probe's answer. */
  exchangeVerdict?(verdict: ExchangeVerdict): void;
}

/** A session's life as its owner sees it: start, watch, stop. */
export interface SessionLifecycle {
  readonly isConnected: boolean;
  /** Connected with every reply channel open. */
  readonly isReady: boolean;
  addListener(listener: SessionListener): void;
  /** Connects in the background; listeners hear how it goes. */
  start(): void;
  /** Closes channels and connection; idempotent. */
  stop(): Promise<void>;
}

/** What a call's result queue holds now. `unknown`: no such queue (never made, expired, deleted). */
export type StoredResult =
  | { readonly kind: 'reply'; readonly reply: Reply }
  | { readonly kind: 'empty' }
  | { readonly kind: 'unknown' };

/** Who holds an idempotency key: this request (`claimed`), or an earlier one (`taken`). */
export type KeyClaim = 'claimed' | 'taken';

/**
 * The broker as the store of calls that outlive their HTTP request (asynchronous calls, idempotency
 * keys): a queue per call that the worker's reply waits in, and a one-message queue per key whose
 * first message wins. Any replica on the same broker reads the same queues; none keeps them in memory.
 */
export interface ResultStore {
  /** Declares a call's result queue; it and its messages go `ttlMs` after they were last used. */
  create(queue: string, ttlMs: number): Promise<void>;
  /**
   * The reply in the queue, left there for the next read; waits up to `waitMs` for one to arrive
   * (0: only looks). `signal` gives up waiting (the caller went away).
   */
  read(queue: string, waitMs: number, signal?: AbortSignal): Promise<StoredResult>;
  /** Adds a result of the bridge's own (a publish's outcome) to a call's queue. */
  put(queue: string, result: Reply): Promise<void>;
  /** Deletes a queue; false if there was none. */
  remove(queue: string): Promise<boolean>;
  /**
   * Claims a key: its one-message queue takes the first message the broker confirms and refuses every
   * later one (`taken`). Nothing ever reads that queue (an unacked read would make room for a second
   * claim), so its count, and the claim, cannot change while the key lives.
   */
  claim(queue: string, ttlMs: number): Promise<KeyClaim>;
}
