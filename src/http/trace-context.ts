import { randomFillSync } from 'node:crypto';
import { formatTraceparent, parseTraceparent } from '../observability/w3c-trace-context.js';

/** W3C trace context for the message headers (https://www.w3.org/TR/trace-context/). */
export interface TraceContext {
  readonly traceparent: string;
  readonly tracestate: string | undefined;
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
