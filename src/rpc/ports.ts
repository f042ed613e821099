import type { Options } from 'amqplib';

/**
 * What the RPC core needs of the broker side, as narrow interfaces: the amqp/ classes satisfy them,
 * and the core's own tests drive the core with small fakes (the broker decides nothing there).
 */

/** The connection's state, for refusing at once (503) instead of publishing into nothing. */
export interface BrokerState {
  readonly isConnected: boolean;
  readonly isBlocked: boolean;
  /** Milliseconds until the next connection attempt, for Retry-After. */
  retryAfterMs(): number;
}

/** A channel that publishes requests and reports what becomes of them by correlation id. */
export interface PublishChannel {
  /**
   * `probe`: a channel of its own for one exchange's first request, held by that request and by the
   * exchange check; it closes when both have released it.
   */
  readonly role: 'shared' | 'probe';
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
  waitForDrain<Waiter extends { readonly isSettled: boolean }>(
    waiter: Waiter,
    resume: (waiter: Waiter, channel: PublishChannel) => void,
  ): void;
  hold(): void;
  release(): void;
}

/** The reply channels that carry requests: the next one in turn, or undefined when none is open. */
export interface ChannelSource {
  pick(): PublishChannel | undefined;
}

export type ExchangeVerdict = 'exists' | 'missing' | 'invalid-name' | 'forbidden';

/** May the bridge publish to this exchange? (The default exchange is never asked about.) */
export interface ExchangeGate {
  /** The answer if it is known and fresh. */
  cached(exchange: string): ExchangeVerdict | undefined;
  /**
   * Asks the broker. `publishFirst` publishes the request that asked on the probe channel, and says
   * whether it did. Rejects with ExchangeChecksExhausted when too many checks are under way.
   */
  check(exchange: string, publishFirst: (probe: PublishChannel) => boolean): Promise<ExchangeVerdict>;
}
