import type { ConsumeMessage } from 'amqplib';

/**
 * How one RPC ended. Exactly one of these reaches the caller per request; the HTTP edge maps each
 * to a response and the metrics label of the same name.
 */
export type RpcOutcome =
  | { readonly kind: 'reply'; readonly message: ConsumeMessage }
  | { readonly kind: 'unroutable'; readonly replyCode: number; readonly replyText: string }
  | { readonly kind: 'exchange-not-found' }
  | { readonly kind: 'exchange-name-refused' }
  | { readonly kind: 'exchange-forbidden'; readonly reason: string }
  | { readonly kind: 'lost'; readonly reason: string }
  | { readonly kind: 'timeout' }
  | { readonly kind: 'cancelled' }
  | { readonly kind: 'unavailable'; readonly reason: string; readonly retryAfterMs: number }
  | { readonly kind: 'overloaded'; readonly reason: string }
  | { readonly kind: 'nacked' };

/** What a reply channel holds for each request it published and has not yet seen answered. */
export interface PendingCall {
  readonly correlationId: string;
  readonly isSettled: boolean;
  /** Idempotent: the first outcome wins, later ones are ignored. */
  settle(outcome: RpcOutcome): void;
}
