/**
 * W3C trace context (https://www.w3.org/TR/trace-context/), parsed as a receiver must: by the HTTP edge
 * for a caller's headers, and by the sample worker for a request message's. No OpenTelemetry code.
 */

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

export function isSampled(parent: RemoteParent): boolean {
  return (parent.flags & SAMPLED) === SAMPLED;
}

export function formatTraceparent(traceId: string, spanId: string, flags: number): string {
  return `00-${traceId}-${spanId}-${flags.toString(16).padStart(2, '0')}`;
}
