import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isSampled, parseTraceparent, traceContextFor } from '../../src/observability/w3c-trace-context.js';

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const SPAN = '00f067aa0ba902b7';

describe('parseTraceparent', () => {
  it('reads a version 00 traceparent and its tracestate', () => {
    expect(parseTraceparent(`00-${TRACE}-${SPAN}-01`, 'vendor=1')).toEqual({
      traceId: TRACE,
      spanId: SPAN,
      flags: 1,
      tracestate: 'vendor=1',
    });
    expect(isSampled(parseTraceparent(`00-${TRACE}-${SPAN}-00`, undefined) ?? fail())).toBe(false);
  });

  it('parses a higher version for the fields version 00 defines, with or without more after a dash', () => {
    expect(parseTraceparent(`01-${TRACE}-${SPAN}-01`, undefined)).toMatchObject({
      traceId: TRACE,
      spanId: SPAN,
      flags: 1,
    });
    expect(parseTraceparent(`cc-${TRACE}-${SPAN}-09-what-the-future-holds`, undefined)).toMatchObject({
      traceId: TRACE,
      flags: 9,
    });
  });

  it.each([
    ['version ff', `ff-${TRACE}-${SPAN}-01`],
    ['version 00 with more after it', `00-${TRACE}-${SPAN}-01-extra`],
    ['a higher version running on in the flags', `01-${TRACE}-${SPAN}-01x`],
    ['an all-zero trace id', `00-${'0'.repeat(32)}-${SPAN}-01`],
    ['an all-zero parent id', `00-${TRACE}-${'0'.repeat(16)}-01`],
    ['upper-case hex', `00-${TRACE.toUpperCase()}-${SPAN}-01`],
    ['a short trace id', `00-${TRACE.slice(1)}-${SPAN}-01`],
    ['a non-hex version', `0g-${TRACE}-${SPAN}-01`],
    ['two headers joined', `00-${TRACE}-${SPAN}-01, 00-${TRACE}-${SPAN}-01`],
    ['nothing', undefined],
    ['an empty value', ''],
  ])('rejects %s', (_what, value) => {
    expect(parseTraceparent(value, 'vendor=1')).toBeUndefined();
  });

  it('drops a tracestate longer than 512 characters, keeping the trace', () => {
    expect(parseTraceparent(`00-${TRACE}-${SPAN}-01`, `a=${'x'.repeat(600)}`)?.tracestate).toBeUndefined();
  });
});

describe('traceContextFor (tracing off)', () => {
  it("passes a caller's version 00 context on as it came, sampled or not", () => {
    for (const flags of ['00', '01']) {
      expect(traceContextFor(`00-${TRACE}-${SPAN}-${flags}`, 'v=1')).toEqual({
        traceparent: `00-${TRACE}-${SPAN}-${flags}`,
        tracestate: 'v=1',
      });
    }
  });

  it('passes a higher version on as version 00, the fields it understands', () => {
    expect(traceContextFor(`02-${TRACE}-${SPAN}-01-more`, undefined).traceparent).toBe(`00-${TRACE}-${SPAN}-01`);
  });

  it('starts a new trace, not sampled, when the caller sent none or an invalid one', () => {
    for (const sent of [undefined, 'garbage', `ff-${TRACE}-${SPAN}-01`]) {
      const started = traceContextFor(sent, 'dropped=1');
      expect(started.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
      expect(started.traceparent).not.toContain(TRACE);
      expect(started.tracestate).toBeUndefined();
    }
    expect(traceContextFor(undefined, undefined).traceparent).not.toBe(
      traceContextFor(undefined, undefined).traceparent,
    );
  });
});

function fail(): never {
  throw new Error('expected a parsed traceparent');
}

describe('parseTraceparent, for any input', () => {
  it('never throws, and reads back what a valid version 00 header holds', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 80 }), (text) => {
        parseTraceparent(text, text);
      }),
    );
    const hex = (length: number) =>
      fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: length, maxLength: length });
    fc.assert(
      fc.property(hex(32), hex(16), hex(2), (traceId, spanId, flags) => {
        const parsed = parseTraceparent(`00-${traceId}-${spanId}-${flags}`, undefined);
        if (/^0+$/.test(traceId) || /^0+$/.test(spanId)) expect(parsed).toBeUndefined();
        else expect(parsed).toEqual({ traceId, spanId, flags: Number.parseInt(flags, 16), tracestate: undefined });
      }),
    );
  });
});
