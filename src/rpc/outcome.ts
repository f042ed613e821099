/** A worker's reply as the RPC core hands it up: the body and what describes it, nothing of AMQP's types. */
export interface Reply {
  readonly body: Buffer;
  readonly contentType: string | undefined;
  readonly contentEncoding: string | undefined;
  readonly headers: Readonly<Record<string, unknown>>;
  /** Why the message's properties could not be decoded (its headers are then empty), if they could not. */
  readonly undecodable?: string | undefined;
}

/**
 * How one RPC ended. Exactly one of these reaches the caller per request; the HTTP edge maps each
 * to a response and the metrics label of the same name.
 */
export type RpcOutcome =
  | { readonly kind: 'reply'; readonly reply: Reply }
  /** A publish the broker confirmed (or, without publisher confirms, wrote to the broker). */
  | { readonly kind: 'accepted' }
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

/** The reply header by which a worker marks a partial reply (`more`); the last reply has none, or `end`. */
const STREAM_HEADER = 'x-stream';
const STREAM_MORE = 'more';

/** A reply with more to come from the same worker for the same call (the stream contract). */
export function isPartialReply(headers: Readonly<Record<string, unknown>> | undefined): boolean {
  return headers?.[STREAM_HEADER] === STREAM_MORE;
}
