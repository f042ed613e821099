/**
 * W3C trace context (https://www.w3.org/TR/trace-context/): parsed as a receiver must, by the HTTP edge
 * for a caller's headers and by the sample worker for a request message's; and passed on in a message's
 * headers, by the edge itself when tracing is off. No OpenTelemetry code.
 */
import { randomFillSync } from 'node:crypto';

const MAX_TRACESTATE_LENGTH = 512;
/** `{version}-{trace-id}-{parent-id}-{flags}`: the 55 characters every version starts with. */
const VERSION_00_LENGTH = 55;
const FIELDS = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})/;
const ZERO_TRACE_ID = '0'.repeat(32);
const ZERO_SPAN_ID = '0'.repeat(16);
const SAMPLED = 0x01;

/** A valid `traceparent`, as version 00 understands it, with the `tracestate` that came with it. */
export interface RemoteParent {
  readonly traceId: string;
  readonly spanId: string;
  /** The trace-flags byte; bit 0 is `sampled`. */
  readonly flags: number;
  readonly tracestate: string | undefined;
}

/**
 * Parses a `traceparent` as the W3C specification asks of a receiver (§3.2, §4.3): version `ff` is
 * invalid; version `00` is exactly 55 characters; a higher version is parsed for the fields version
 * 00 defines, and anything it appends must follow a `-`. Lower-case hex only, non-zero ids. Undefined
 * when invalid: the caller then starts a new trace, and drops the tracestate with it.
 */
export function parseTraceparent(traceparent: unknown, tracestate: unknown): RemoteParent | undefined {
  if (typeof traceparent !== 'string' || traceparent.length < VERSION_00_LENGTH) return undefined;
  const fields = FIELDS.exec(traceparent);
  if (fields === null) return undefined;
  const [, version, traceId, spanId, flags] = fields as unknown as [string, string, string, string, string];
  if (version === 'ff') return undefined;
  if (version === '00' ? traceparent.length !== VERSION_00_LENGTH : !isFutureSuffix(traceparent)) return undefined;
  if (traceId === ZERO_TRACE_ID || spanId === ZERO_SPAN_ID) return undefined;
  const state = typeof tracestate === 'string' && tracestate.length <= MAX_TRACESTATE_LENGTH ? tracestate : undefined;
  return { traceId, spanId, flags: Number.parseInt(flags, 16), tracestate: state };
}

/** A higher version may append fields, after a `-`; it may not run on in the flags. */
function isFutureSuffix(traceparent: string): boolean {
  return traceparent.length === VERSION_00_LENGTH || traceparent.charCodeAt(VERSION_00_LENGTH) === 0x2d;
}

/** The W3C headers a message carries: its worker's span continues this trace. */
export interface TraceContext {
  readonly traceparent: string;
  readonly tracestate: string | undefined;
}

export function isSampled(parent: RemoteParent): boolean {
  return (parent.flags & SAMPLED) === SAMPLED;
}

export function formatTraceparent(traceId: string, spanId: string, flags: number): string {
  return `00-${traceId}-${spanId}-${flags.toString(16).padStart(2, '0')}`;
}

/**
 * The trace context for the message when the bridge exports no spans: the caller's, passed on (as
 * version 00, the version the bridge speaks: a worker that only knows 00 would drop a higher one); or,
 * when the caller sent none or an invalid one, a new trace the bridge starts, marked not sampled
 * (`-00`). The bridge records nothing of it, so it must not ask everything downstream to record it.
 */
export function traceContextFor(traceparent: unknown, tracestate: unknown): TraceContext {
  const parent = parseTraceparent(traceparent, tracestate);
  if (parent !== undefined) {
    // Valid and version 00: exactly what the caller sent. A higher version: the fields 00 defines.
    const passed = (traceparent as string).startsWith('00-')
      ? (traceparent as string)
      : formatTraceparent(parent.traceId, parent.spanId, parent.flags);
    return { traceparent: passed, tracestate: parent.tracestate };
  }
  const ids = nextRandomIds();
  return { traceparent: `00-${ids.slice(0, 32)}-${ids.slice(32)}-00`, tracestate: undefined };
}

/** 16 bytes of trace id and 8 of span id per trace; drawn from a pool refilled every 256 traces. */
const IDS_BYTES = 24;
const pool = Buffer.allocUnsafe(IDS_BYTES * 256);
let poolOffset = pool.length;

/** 48 random hex digits. One call into the system's generator per 256 traces, not one per request. */
function nextRandomIds(): string {
  if (poolOffset === pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const hex = pool.toString('hex', poolOffset, poolOffset + IDS_BYTES);
  poolOffset += IDS_BYTES;
  return hex;
}
