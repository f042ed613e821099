import type { CallerRefusal } from '../rpc/caller-pools.js';
import type { Reply, RpcOutcome } from '../rpc/outcome.js';
import { BASIC_CHALLENGE } from './access/access-control.js';
import { HttpProblem } from './problems.js';

/** What the worker's reply becomes over HTTP. */
export interface HttpReply {
  readonly status: number;
  readonly headers: Array<readonly [string, string]>;
  readonly body: Buffer;
}

export const STATUS_HEADER = 'http-status';
/**
 * What a reply may bring back as Amqp-Header-* fields. Common HTTP clients refuse a response whose
 * header section passes 16 KiB (Node's and undici's default), so a reply that would make one is a
 * bad reply (502), not a response the caller cannot read.
 */
export const MAX_REPLY_HEADERS = 64;
export const MAX_REPLY_HEADER_BYTES = 8 * 1024;
const FORWARDED_PREFIX = 'Amqp-Header-';
const DEFAULT_CONTENT_TYPE = 'application/octet-stream';
/** Reply headers that do not come back: the status has its own place, trace context belongs to the caller. */
const NOT_FORWARDED = new Set([STATUS_HEADER, 'traceparent', 'tracestate']);
/** RFC 9110 token: what Node accepts as a header name. */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** What Node accepts as a header value (after the UTF-8 bytes are laid out one per character). */
const INVALID_VALUE = /[^\t\u0020-\u007e\u0080-\u00ff]/;

/** Throws 502 bad-reply when the reply cannot be turned into a faithful HTTP response. */
export function replyToHttp(reply: Reply, target: string): HttpReply {
  if (reply.undecodable !== undefined) {
    throw new HttpProblem('bad-reply', `The reply's headers could not be decoded: ${reply.undecodable}`, { target });
  }
  const replyHeaders = reply.headers;
  const headers: Array<readonly [string, string]> = [];
  headers.push(['Content-Type', headerValue(reply.contentType) ?? DEFAULT_CONTENT_TYPE]);
  const encoding = headerValue(reply.contentEncoding);
  if (encoding !== undefined) headers.push(['Content-Encoding', encoding]);
  let forwarded = 0;
  let headerBytes = 0;
  for (const [name, value] of Object.entries(replyHeaders)) {
    if (NOT_FORWARDED.has(name) || !TOKEN.test(name)) continue;
    const text = headerValue(value);
    if (text === undefined) continue;
    const field = FORWARDED_PREFIX + name;
    // As on the wire: "name: value" and CRLF.
    headerBytes += field.length + text.length + 4;
    headers.push([field, text]);
    forwarded += 1;
    if (forwarded > MAX_REPLY_HEADERS || headerBytes > MAX_REPLY_HEADER_BYTES) {
      throw new HttpProblem(
        'bad-reply',
        `The reply's headers would not fit a response callers can read: at most ${MAX_REPLY_HEADERS} headers and ${MAX_REPLY_HEADER_BYTES} bytes of them come back`,
        { target },
      );
    }
  }
  return { status: replyStatus(replyHeaders[STATUS_HEADER], target), headers, body: reply.body };
}

export function replyStatus(value: unknown, target: string): number {
  if (value === undefined) return 200;
  const status = typeof value === 'string' && /^[0-9]{3}$/.test(value) ? Number(value) : value;
  if (typeof status !== 'number' || !Number.isInteger(status) || status < 200 || status > 599) {
    throw new HttpProblem('bad-reply', `The reply's ${STATUS_HEADER} header must be an integer from 200 to 599`, {
      target,
    });
  }
  return status;
}

/** A scalar reply value as an HTTP header value (UTF-8 bytes on the wire), or undefined if it cannot be one. */
function headerValue(value: unknown): string | undefined {
  let text: string;
  if (typeof value === 'string') text = value;
  else if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') text = String(value);
  else return undefined;
  const wire = Buffer.from(text, 'utf8').toString('latin1');
  return INVALID_VALUE.test(wire) ? undefined : wire;
}

/** The problem each unsuccessful outcome is answered with. */
export function outcomeProblem(
  outcome: Exclude<RpcOutcome, { kind: 'reply' } | { kind: 'accepted' }>,
  target: string,
  operation: 'rpc' | 'publish' = 'rpc',
): HttpProblem {
  switch (outcome.kind) {
    case 'unroutable':
      return new HttpProblem(
        'unroutable',
        `The broker returned the message: ${outcome.replyCode} ${outcome.replyText} (no queue is bound for it)`,
        { target },
      );
    case 'exchange-not-found':
      return new HttpProblem('exchange-not-found', 'The exchange does not exist on the broker', { target });
    case 'exchange-name-refused':
      return new HttpProblem(
        'invalid-request',
        'The broker refuses this exchange name (406 PRECONDITION_FAILED on its declare); nothing was published',
        { target },
      );
    case 'exchange-forbidden':
      return new HttpProblem(
        'forbidden',
        `The broker refuses publishes to this exchange (an internal exchange, or no write permission for the broker user): ${outcome.reason}`,
        { target },
      );
    case 'lost':
      return new HttpProblem('request-lost', `The request was lost before a reply arrived: ${outcome.reason}`, {
        target,
      });
    case 'timeout':
      return new HttpProblem(
        'timeout',
        operation === 'rpc'
          ? 'No reply arrived within the request timeout'
          : 'The broker did not confirm the message within the timeout; it may or may not be queued',
        { target },
      );
    case 'unavailable':
      return new HttpProblem('broker-unavailable', `The bridge cannot reach the broker: ${outcome.reason}`, {
        target,
        retryAfterSeconds: Math.max(1, Math.ceil(outcome.retryAfterMs / 1000)),
      });
    case 'overloaded':
      return new HttpProblem('overloaded', `The bridge is overloaded: ${outcome.reason}`, {
        target,
        retryAfterSeconds: 1,
      });
    case 'nacked':
      return new HttpProblem(
        'broker-rejected',
        'The broker refused the message (basic.nack): the queue is full and rejects publishes, or the broker failed to take it',
        { target, retryAfterSeconds: 1 },
      );
    case 'cancelled':
      return new HttpProblem('request-lost', 'The client closed the connection', { target });
  }
}

/** Why a caller's own broker connection cannot be had, as the caller is told it. */
export function callerRefusalProblem(refusal: CallerRefusal): HttpProblem {
  switch (refusal.kind) {
    case 'login-refused':
      return new HttpProblem('unauthorized', `The broker refused the login of "${refusal.username}"`, {
        challenge: BASIC_CHALLENGE,
      });
    case 'login-throttled':
      return new HttpProblem(
        'unauthorized',
        `Too many refused broker logins for "${refusal.username}" or from this address; try again later`,
        { challenge: BASIC_CHALLENGE, retryAfterSeconds: Math.max(1, Math.ceil(refusal.retryAfterMs / 1000)) },
      );
    case 'logins-busy':
      return new HttpProblem(
        'overloaded',
        `Broker logins for "${refusal.username}" or from this address are under way; retry shortly`,
        { retryAfterSeconds: 1 },
      );
    case 'no-room':
      return new HttpProblem(
        'overloaded',
        `${refusal.connections} broker logins have a connection, none idle (AMQP_CALLER_MAX_USERS); retry shortly`,
        { retryAfterSeconds: 1 },
      );
    case 'unavailable':
      return new HttpProblem(
        'broker-unavailable',
        `No broker connection for ${refusal.username} could be opened in time`,
        { retryAfterSeconds: 1 },
      );
    case 'shutting-down':
      return new HttpProblem('shutting-down', 'The bridge is shutting down');
  }
}
