import type { IncomingHttpHeaders } from 'node:http';
import { REPLY_TO_QUEUES } from '../config/config.js';
import { traceContextFor } from '../observability/w3c-trace-context.js';
import { BRIDGE_QUEUE_PREFIX } from '../rpc/call-ids.js';
import type { RpcRequest } from '../rpc/rpc-request.js';
import { HttpProblem } from './problems.js';

/** Where a request goes: the default exchange with the queue as routing key, or a named exchange. */
export interface RpcTarget {
  readonly exchange: string;
  readonly routingKey: string;
  /** How the target appears in metrics, logs and problem documents. */
  readonly label: string;
}

export interface MappingLimits {
  readonly defaultTimeoutMs: number;
  readonly maxTimeoutMs: number;
  /** What sets the ceiling, for the error a caller gets past it (default RPC_MAX_TIMEOUT_MS). */
  readonly maxTimeoutSource?: string;
}

/** AMQP short strings (names, most properties) are at most 255 bytes. */
export const SHORT_STRING_BYTES = 255;
/** More message headers than any real RPC needs; keeps the encoded table small. */
export const MAX_MESSAGE_HEADERS = 64;
/** amqplib refuses tables over 64 KiB; stay well below so a publish never throws for size. */
export const MAX_HEADER_TABLE_BYTES = 32 * 1024;
const HEADER_PREFIX = 'amqp-header-';
/**
 * Message headers only the bridge sets, so a worker can trust them: who called (x-caller) and until
 * when the caller waits (x-deadline). A caller's Amqp-Header-* of these names is refused, not dropped:
 * it says something the caller should know it cannot say.
 */
export const BRIDGE_HEADERS: ReadonlySet<string> = new Set(['x-caller', 'x-deadline']);
/** Exchanges every broker declares; any other `amq.` exchange is the broker's own business. */
const STANDARD_EXCHANGES = new Set(['amq.direct', 'amq.topic', 'amq.fanout', 'amq.headers', 'amq.match']);
// biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
export const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f]/;
const POSITIVE_INTEGER = /^[1-9][0-9]*$/;

export function queueTarget(queue: unknown): RpcTarget {
  const name = checkName('queue', queue);
  if (name.startsWith('amq.')) {
    throw invalid(`Queue names starting with "amq." are reserved by the broker and cannot be addressed`, name);
  }
  // Other callers' deferred calls wait in these: a request into one would pass for its reply.
  if (name.startsWith(BRIDGE_QUEUE_PREFIX)) {
    throw invalid(
      `Queue names starting with "${BRIDGE_QUEUE_PREFIX}" hold the bridge's own calls and cannot be addressed`,
      name,
    );
  }
  return { exchange: '', routingKey: name, label: name };
}

export function exchangeTarget(exchange: unknown, routingKey: unknown): RpcTarget {
  const exchangeName = checkName('exchange', exchange);
  const key = checkName('routing key', routingKey);
  const label = `${exchangeName}:${key}`;
  if (exchangeName.startsWith('amq.') && !STANDARD_EXCHANGES.has(exchangeName)) {
    throw invalid(`Exchange "${exchangeName}" is reserved by the broker`, label);
  }
  // A routing key under a direct reply-to name would address another caller's reply consumer.
  if (REPLY_TO_QUEUES.some((prefix) => key.startsWith(prefix))) {
    throw invalid('Routing keys that address a reply-to pseudo-queue are not allowed', label);
  }
  return { exchange: exchangeName, routingKey: key, label };
}

export type MessageFields = Omit<RpcRequest, 'exchange' | 'routingKey' | 'body' | 'requestId' | 'receivedAt' | 'mode'>;

/**
 * Maps the HTTP request's headers and query to the message properties that cross to AMQP. Only the
 * headers the contract names cross; everything else (Authorization, Cookie, ...) stays behind.
 */
export function messageFields(
  headers: IncomingHttpHeaders,
  timeoutQuery: string | undefined,
  target: RpcTarget,
  limits: MappingLimits,
  mode: RpcRequest['mode'] = 'rpc',
): MessageFields {
  return {
    // An RPC outliving its caller is of no use: never persistent. A publish is, unless the caller says.
    deliveryMode: mode === 'rpc' ? 1 : parseDeliveryMode(headers['amqp-delivery-mode'], target.label),
    timeoutMs: parseTimeout(headers['amqp-timeout'], timeoutQuery, limits, target.label),
    contentType: shortString('Content-Type', headers['content-type'], target.label),
    contentEncoding: shortString('Content-Encoding', headers['content-encoding'], target.label),
    priority: parsePriority(headers['amqp-priority'], target.label),
    type: shortString('Amqp-Type', headers['amqp-type'], target.label),
    messageId: shortString('Amqp-Message-Id', headers['amqp-message-id'], target.label),
    headers: messageHeaders(headers, target.label),
  };
}

export function parseTimeout(header: unknown, query: unknown, limits: MappingLimits, target: string): number {
  const raw = header ?? query;
  if (raw === undefined) return limits.defaultTimeoutMs;
  const source = header !== undefined ? 'Amqp-Timeout' : 'timeout';
  if (typeof raw !== 'string' || !POSITIVE_INTEGER.test(raw)) {
    throw invalid(`${source} must be a positive whole number of milliseconds`, target);
  }
  const timeout = Number(raw);
  if (timeout > limits.maxTimeoutMs) {
    throw invalid(
      `${source} must not exceed ${limits.maxTimeoutMs} ms (${limits.maxTimeoutSource ?? 'RPC_MAX_TIMEOUT_MS'})`,
      target,
    );
  }
  return timeout;
}

export function parseDeliveryMode(header: unknown, target: string): 1 | 2 {
  if (header === undefined) return 2;
  if (header === '1' || header === '2') return Number(header) as 1 | 2;
  throw invalid('Amqp-Delivery-Mode must be 1 (non-persistent) or 2 (persistent)', target);
}

export function parsePriority(header: unknown, target: string): number | undefined {
  if (header === undefined) return undefined;
  if (typeof header !== 'string' || !/^[0-9]{1,3}$/.test(header) || Number(header) > 255) {
    throw invalid('Amqp-Priority must be a whole number from 0 to 255', target);
  }
  return Number(header);
}

/**
 * `Amqp-Header-<Name>: value` becomes message header `<name>`; the W3C trace context crosses as is,
 * or a new one is started when the caller sent none.
 */
export function messageHeaders(headers: IncomingHttpHeaders, target: string): Record<string, string> {
  // No prototype: a header named __proto__ must be a plain key, not a prototype switch.
  const table: Record<string, string> = Object.create(null);
  let count = 0;
  let bytes = 0;
  for (const [name, value] of Object.entries(headers)) {
    if (!name.startsWith(HEADER_PREFIX) || value === undefined) continue;
    const key = name.slice(HEADER_PREFIX.length);
    if (key === '') throw invalid('Amqp-Header- needs a name after the prefix', target);
    if (BRIDGE_HEADERS.has(key)) throw invalid(`Amqp-Header-${key} is set by the bridge, never by a caller`, target);
    const text = fromHeaderBytes(Array.isArray(value) ? value.join(', ') : value);
    const keyBytes = Buffer.byteLength(key);
    count += 1;
    bytes += keyBytes + Buffer.byteLength(text) + 6;
    if (count > MAX_MESSAGE_HEADERS) {
      throw invalid(`At most ${MAX_MESSAGE_HEADERS} Amqp-Header-* headers are allowed`, target);
    }
    if (keyBytes > SHORT_STRING_BYTES) throw invalid('An Amqp-Header-* name is too long', target);
    table[key] = text;
  }
  if (bytes > MAX_HEADER_TABLE_BYTES) {
    throw invalid(`Amqp-Header-* headers exceed ${MAX_HEADER_TABLE_BYTES} bytes in total`, target);
  }
  const trace = traceContextFor(headers.traceparent, headers.tracestate);
  table.traceparent = trace.traceparent;
  if (trace.tracestate !== undefined) table.tracestate = trace.tracestate;
  return table;
}

/**
 * Node hands header values over as latin1 text, one character per byte. A client that sent UTF-8
 * meant UTF-8, so non-ASCII values are decoded again from their original bytes.
 */
export function fromHeaderBytes(value: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: detecting any non-ASCII byte
  if (!/[^\u0000-\u007f]/.test(value)) return value;
  return Buffer.from(value, 'latin1').toString('utf8');
}

function shortString(header: string, value: unknown, target: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value === '') throw invalid(`${header} must not be empty`, target);
  const text = fromHeaderBytes(value);
  if (Buffer.byteLength(text) > SHORT_STRING_BYTES) {
    throw invalid(`${header} must be at most ${SHORT_STRING_BYTES} bytes`, target);
  }
  return text;
}

function checkName(what: string, value: unknown): string {
  if (typeof value !== 'string' || value === '') throw invalid(`The ${what} name must not be empty`);
  if (Buffer.byteLength(value) > SHORT_STRING_BYTES) {
    throw invalid(`The ${what} name must be at most ${SHORT_STRING_BYTES} bytes of UTF-8`);
  }
  if (CONTROL_CHARACTERS.test(value)) throw invalid(`The ${what} name must not contain control characters`);
  return value;
}

function invalid(detail: string, target?: string): HttpProblem {
  return new HttpProblem('invalid-request', detail, target === undefined ? {} : { target });
}
