import {
  type Context,
  context,
  createTraceState,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  trace,
} from '@opentelemetry/api';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeTraceRequest, OtlpTraceBatch } from '../../src/observability/otlp/trace-encoder.js';
import { decodeTraceRequest } from '../helpers/otlp-protobuf.js';

/** Finished spans from a real SDK provider, as the batch processor hands them to an exporter. */
function tracerWith(serviceName: string, extra: Record<string, string> = {}) {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': serviceName, ...extra }),
    spanProcessors: [new SimpleSpanProcessor(exporter)],
  });
  return { provider, exporter };
}

function remoteParent(tracestate?: string): Context {
  return trace.setSpanContext(ROOT_CONTEXT, {
    traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
    spanId: '00f067aa0ba902b7',
    traceFlags: TraceFlags.SAMPLED,
    isRemote: true,
    ...(tracestate === undefined ? {} : { traceState: createTraceState(tracestate) }),
  });
}

/** The spans the bridge makes for one request, and spans with everything else OTLP can carry. */
function spansOfEveryShape(): ReadableSpan[] {
  const bridge = tracerWith('amqp-rpc-bridge');
  const tracer = bridge.provider.getTracer('amqp-rpc-bridge');
  const other = bridge.provider.getTracer('other-scope', '1.2.3', {
    schemaUrl: 'https://opentelemetry.io/schemas/1.30.0',
  });

  const server = tracer.startSpan(
    'POST /rpc/:queue',
    { kind: SpanKind.SERVER, attributes: { 'http.request.method': 'POST', 'http.route': '/rpc/:queue' } },
    remoteParent('vendor=opaque,other=1'),
  );
  const producer = tracer.startSpan(
    'send orders',
    {
      kind: SpanKind.PRODUCER,
      attributes: {
        'messaging.system': 'rabbitmq',
        'messaging.operation.type': 'send',
        'messaging.destination.name': '',
        'messaging.rabbitmq.destination.routing_key': 'orders',
        'messaging.message.body.size': 100,
      },
    },
    trace.setSpan(ROOT_CONTEXT, server),
  );
  producer.setAttribute('messaging.message.conversation_id', '6f1c2a9e-0d4b-4c36-9a57-1f2e3d4c5b6a');
  producer.setStatus({ code: SpanStatusCode.ERROR, message: 'timeout' });
  producer.end();
  server.recordException(new Error('the worker did not answer in time: ünïcödé'));
  server.setAttribute('http.response.status_code', 504);
  server.end();

  const root = other.startSpan('unsampled-parent root 🌍', {
    kind: SpanKind.INTERNAL,
    attributes: {
      strings: ['a', 'β', ''],
      numbers: [1, -1, 2.5, Number.MAX_SAFE_INTEGER, -(2 ** 40)],
      flags: [true, false],
      gaps: ['x', null, undefined, 'y'] as string[],
      negative: -42,
      huge: 2 ** 60,
      fraction: 0.1,
      notANumber: Number.NaN,
      yes: true,
      long: 'x'.repeat(200),
      longer: 'y'.repeat(20_000),
      nonAscii: 'ça coûte 3 €',
      // At the edges of a one-byte length: 126 and 129 bytes, 140 bytes in 70 characters.
      euros42: '€'.repeat(42),
      euros43: '€'.repeat(43),
      accents: 'é'.repeat(70),
    },
    links: [
      {
        context: { traceId: 'a'.repeat(32), spanId: 'b'.repeat(16), traceFlags: 0, isRemote: true },
        attributes: { why: 'batch' },
      },
      {
        context: {
          traceId: '0af7651916cd43dd8448eb211c80319c',
          spanId: 'b7ad6b7169203331',
          traceFlags: 1,
          traceState: createTraceState('k=v'),
        },
      },
    ],
    startTime: [1_764_000_000, 123_456_789],
  });
  root.addEvent('checkpoint', { step: 1 }, [4_294_967_295, 999_999_999]);
  root.addEvent('no attributes');
  root.setStatus({ code: SpanStatusCode.OK });
  root.end([1_764_000_001, 1]);
  context.with(ROOT_CONTEXT, () => other.startSpan('zero time', { startTime: [0, 0] }).end([0, 1]));

  // A second resource in the same export: OTLP groups by resource, then by scope.
  const worker = tracerWith('worker', { 'deployment.environment.name': 'test' });
  const consumer = worker.provider.getTracer('worker').startSpan('process orders', { kind: SpanKind.CONSUMER });
  consumer.end();

  // Interleaved, as a batch from several tracers arrives.
  const [a, b, ...rest] = bridge.exporter.getFinishedSpans();
  return [a, ...worker.exporter.getFinishedSpans(), b, ...rest].filter((span) => span !== undefined);
}

describe('OTLP trace encoder', () => {
  it('writes what the SDK serializer writes, byte for byte, for every shape of span', () => {
    const spans = spansOfEveryShape();
    expect(spans.length).toBe(5);
    const theirs = ProtobufTraceSerializer.serializeRequest(spans);
    const ours = encodeTraceRequest(spans);
    expect(theirs).toBeDefined();
    expect(Buffer.from(ours).toString('hex')).toBe(Buffer.from(theirs as Uint8Array).toString('hex'));
  });

  it('writes any span time as the SDK does (nanoseconds since the epoch do not fit a double)', () => {
    const hrTime = fc.tuple(fc.integer({ min: 0, max: 2 ** 34 }), fc.integer({ min: 0, max: 999_999_999 }));
    fc.assert(
      fc.property(hrTime, hrTime, ([seconds, nanos], [moreSeconds, moreNanos]) => {
        const { provider, exporter } = tracerWith('times');
        const span = provider.getTracer('times').startSpan('t', { startTime: [seconds, nanos] });
        span.addEvent('e', {}, [moreSeconds, moreNanos]);
        span.end([seconds + moreSeconds, moreNanos]);
        const spans = exporter.getFinishedSpans();
        const theirs = Buffer.from(ProtobufTraceSerializer.serializeRequest(spans) as Uint8Array);
        expect(Buffer.from(encodeTraceRequest(spans)).toString('hex')).toBe(theirs.toString('hex'));
      }),
      { numRuns: 500 },
    );
  });

  it('starts each request empty, and hands out a copy the next request does not overwrite', () => {
    const spans = spansOfEveryShape();
    const batch = new OtlpTraceBatch();
    for (const span of spans) batch.add(span);
    expect(batch.spanCount).toBe(spans.length);
    const first = batch.request();
    const kept = Buffer.from(first).toString('hex');
    expect(kept).toBe(Buffer.from(encodeTraceRequest(spans)).toString('hex'));
    expect(batch.spanCount).toBe(0);

    // Only the second request's spans in it, though its groups were made for the first.
    const later = spans.slice(1, 3);
    for (const span of later) batch.add(span);
    expect(Buffer.from(batch.request()).toString('hex')).toBe(Buffer.from(encodeTraceRequest(later)).toString('hex'));
    expect(Buffer.from(first).toString('hex')).toBe(kept);
    expect(batch.request().length).toBe(0);
  });

  it('grows past its first buffer for a batch larger than it', () => {
    const { provider, exporter } = tracerWith('big');
    const tracer = provider.getTracer('big');
    for (let i = 0; i < 2_000; i++)
      tracer.startSpan(`span ${i}`, { attributes: { index: i, pad: 'p'.repeat(40) } }).end();
    const spans = exporter.getFinishedSpans();
    const ours = encodeTraceRequest(spans);
    expect(ours.length).toBeGreaterThan(64 * 1024);
    expect(Buffer.from(ours).equals(Buffer.from(ProtobufTraceSerializer.serializeRequest(spans) as Uint8Array))).toBe(
      true,
    );
  });

  it('leaves out a span it cannot encode, and keeps the rest of the batch whole', () => {
    const { provider, exporter } = tracerWith('odd');
    const tracer = provider.getTracer('odd');
    tracer.startSpan('before').end();
    const odd = tracer.startSpan('odd');
    // The SDK does not check an event's name; a number cannot be written as one.
    odd.addEvent(42 as unknown as string);
    expect(() => odd.end()).not.toThrow();
    tracer.startSpan('after').end();
    const [before, broken, after] = exporter.getFinishedSpans();
    const batch = new OtlpTraceBatch();
    expect(batch.add(before as ReadableSpan)).toBe(true);
    expect(batch.add(broken as ReadableSpan)).toBe(false);
    expect(batch.add(after as ReadableSpan)).toBe(true);
    expect(batch.spanCount).toBe(2);
    const request = Buffer.from(batch.request());
    expect(request.toString('hex')).toBe(
      Buffer.from(encodeTraceRequest([before, after] as ReadableSpan[])).toString('hex'),
    );
    const names = decodeTraceRequest(request).resourceSpans.flatMap((r) =>
      r.scopeSpans.flatMap((s) => s.spans.map((span) => span.name)),
    );
    expect(names).toEqual(['before', 'after']);
  });

  it('keeps a request readable when a link id is not hex (the SDK does not check them)', () => {
    const { provider, exporter } = tracerWith('links');
    provider
      .getTracer('links')
      .startSpan('linked', {
        links: [{ context: { traceId: `zz${'a'.repeat(30)}`, spanId: 'b'.repeat(16), traceFlags: 1 } }],
      })
      .end();
    const request = decodeTraceRequest(Buffer.from(encodeTraceRequest(exporter.getFinishedSpans())));
    expect(request.resourceSpans[0]?.scopeSpans[0]?.spans.map((span) => span.name)).toEqual(['linked']);
  });

  it('encodes an empty batch as an empty request', () => {
    expect(encodeTraceRequest([]).length).toBe(0);
  });
});
