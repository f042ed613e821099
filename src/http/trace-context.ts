import { randomFillSync } from 'node:crypto';

const TRACEPARENT = /^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$/;
const MAX_TRACESTATE_LENGTH = 512;

/** W3C trace context for the message headers (https://www.w3.org/TR/trace-context/). */
export interface TraceContext {
  readonly traceparent: string;
  readonly tracestate: string | undefined;
}

/**
 * The caller's trace context when it is valid (version 00, non-zero ids), passed on as is; else a
 * new one the bridge starts (sampled), so that the worker can continue a trace either way. An invalid
 * traceparent is dropped with its tracestate, as the specification asks.
 */
export function traceContextFor(traceparent: unknown, tracestate: unknown): TraceContext {
  if (typeof traceparent === 'string' && TRACEPARENT.test(traceparent)) {
    const state = typeof tracestate === 'string' && tracestate.length <= MAX_TRACESTATE_LENGTH ? tracestate : undefined;
    return { traceparent, tracestate: state };
  }
  const ids = nextRandomIds();
  return { traceparent: `00-${ids.slice(0, 32)}-${ids.slice(32)}-01`, tracestate: undefined };
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
