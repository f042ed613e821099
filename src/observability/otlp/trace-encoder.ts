/**
 * OTLP ExportTraceServiceRequests (opentelemetry/proto/collector/trace/v1) in protobuf, from the SDK's
 * finished spans: the bytes the SDK's own protobuf serializer writes (the unit test holds it to that),
 * at a fraction of its CPU. With every request sampled, encoding was the largest part of what tracing
 * cost the bridge: the SDK's serializer measures every string twice (size, then write), spells ids out
 * of hex in JavaScript and encodes the same attribute keys for every span. Here keys are encoded once,
 * ids are decoded natively, and buffers are reused from one export to the next.
 */
import type { Attributes, HrTime, Link, SpanContext, SpanStatus } from '@opentelemetry/api';
import { globalErrorHandler, type InstrumentationScope } from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { ReadableSpan, TimedEvent } from '@opentelemetry/sdk-trace-base';
import { toError } from '../../errors.js';
import { ProtobufWriter, WIRE } from './protobuf-writer.js';

const HAS_IS_REMOTE = 0x100;
const IS_REMOTE = 0x200;
const NANOS_PER_SECOND = 1_000_000_000;
const TWO_POW_32 = 0x1_0000_0000;
const MIN_INT64 = -(2 ** 63);
const MAX_INT64_EXCLUSIVE = 2 ** 63;
/** Attribute keys come from code, not from requests; the bound only guards against a surprise. */
const MAX_CACHED_KEYS = 1024;

/**
 * Spans encoded one by one as they are added, grouped by resource and instrumentation scope, until
 * `request()` makes one export request of them. Encoding a span when it ends, not when its batch is
 * exported, lets the span be collected young and reads it while it is still in the CPU's caches.
 */
export class OtlpTraceBatch {
  private readonly output = new ProtobufWriter();
  private readonly fields = new SpanFields();
  /** Each group's encoded `ScopeSpans.spans` fields, in the order the groups came in this batch. */
  private readonly groups = new Map<Resource, Map<InstrumentationScope, ProtobufWriter>>();
  /** The writers of earlier batches' groups, grown to size: reused rather than grown again. */
  private readonly spare: ProtobufWriter[] = [];
  private count = 0;

  get spanCount(): number {
    return this.count;
  }

  /**
   * Encodes the span into the batch; false, with the batch as it was, when it cannot be encoded (the
   * SDK checks little of what a span holds: an event named by a number, say). The error goes to the
   * SDK's error handler, not to whoever ended the span.
   */
  add(span: ReadableSpan): boolean {
    let byScope = this.groups.get(span.resource);
    if (byScope === undefined) {
      byScope = new Map();
      this.groups.set(span.resource, byScope);
    }
    let group = byScope.get(span.instrumentationScope);
    if (group === undefined) {
      group = this.spare.pop() ?? new ProtobufWriter(16 * 1024);
      byScope.set(span.instrumentationScope, group);
    }
    const before = group.pos;
    try {
      group.tag(2, WIRE.lengthDelimited);
      this.fields.span(group, span);
    } catch (err) {
      group.pos = before;
      globalErrorHandler(toError(err));
      return false;
    }
    this.count++;
    return true;
  }

  /** The request for every span added since the last one; the batch is then empty. */
  request(): Uint8Array {
    const writer = this.output;
    const fields = this.fields;
    writer.reset();
    for (const [resource, byScope] of this.groups) {
      writer.tag(1, WIRE.lengthDelimited);
      const resourceSpans = writer.begin(3);
      fields.resource(writer, resource);
      for (const [scope, spans] of byScope) {
        writer.tag(2, WIRE.lengthDelimited);
        const scopeSpans = writer.begin(3);
        fields.scope(writer, scope);
        writer.raw(spans.written());
        if (scope.schemaUrl) fields.string(writer, 3, scope.schemaUrl);
        writer.end(scopeSpans, 3);
        spans.reset();
        this.spare.push(spans);
      }
      if (resource.schemaUrl) fields.string(writer, 3, resource.schemaUrl);
      writer.end(resourceSpans, 3);
    }
    this.groups.clear();
    this.count = 0;
    return writer.take();
  }
}

/** One request of `spans`, as the SDK's serializer makes it (grouped in the order spans come). */
export function encodeTraceRequest(spans: readonly ReadableSpan[]): Uint8Array {
  const batch = new OtlpTraceBatch();
  for (const span of spans) batch.add(span);
  return batch.request();
}

/** The messages below ScopeSpans, field by field, in the order trace.proto numbers them. */
class SpanFields {
  /** A KeyValue's key field (tag, length, UTF-8), per key. */
  private readonly keys = new Map<string, Uint8Array>();

  resource(writer: ProtobufWriter, resource: Resource): void {
    writer.tag(1, WIRE.lengthDelimited);
    const start = writer.begin(2);
    this.attributes(writer, 1, resource.attributes);
    this.varint(writer, 2, 0);
    writer.end(start, 2);
  }

  scope(
    writer: ProtobufWriter,
    scope: InstrumentationScope & { attributes?: Attributes; droppedAttributesCount?: number },
  ): void {
    writer.tag(1, WIRE.lengthDelimited);
    const start = writer.begin(1);
    this.string(writer, 1, scope.name);
    if (scope.version) this.string(writer, 2, scope.version);
    if (scope.attributes) this.attributes(writer, 3, scope.attributes);
    if (scope.droppedAttributesCount) this.varint(writer, 4, scope.droppedAttributesCount);
    writer.end(start, 1);
  }

  span(writer: ProtobufWriter, span: ReadableSpan): void {
    const start = writer.begin(2);
    const context = span.spanContext();
    const parent = span.parentSpanContext;
    this.identity(writer, context);
    if (parent?.spanId) {
      writer.tag(4, WIRE.lengthDelimited);
      writer.hexBytes(parent.spanId);
    }
    this.string(writer, 5, span.name);
    // OTLP's kinds count from 1 (0 is unspecified); the API's from 0.
    this.varint(writer, 6, span.kind + 1);
    this.time(writer, 7, span.startTime);
    this.time(writer, 8, span.endTime);
    this.attributes(writer, 9, span.attributes);
    this.varint(writer, 10, span.droppedAttributesCount);
    for (const event of span.events) this.event(writer, event);
    this.varint(writer, 12, span.droppedEventsCount);
    for (const link of span.links) this.link(writer, link);
    this.varint(writer, 14, span.droppedLinksCount);
    this.status(writer, span.status);
    writer.tag(16, WIRE.fixed32);
    writer.fixed32(spanFlags(context, parent?.isRemote));
    writer.end(start, 2);
  }

  string(writer: ProtobufWriter, field: number, value: string): void {
    writer.tag(field, WIRE.lengthDelimited);
    writer.string(value);
  }

  /** Fields 1 to 3 of a Span and of a Link alike: trace id, span id, trace state. */
  private identity(writer: ProtobufWriter, context: SpanContext): void {
    writer.tag(1, WIRE.lengthDelimited);
    writer.hexBytes(context.traceId);
    writer.tag(2, WIRE.lengthDelimited);
    writer.hexBytes(context.spanId);
    const traceState = context.traceState?.serialize();
    if (traceState) this.string(writer, 3, traceState);
  }

  private event(writer: ProtobufWriter, event: TimedEvent): void {
    writer.tag(11, WIRE.lengthDelimited);
    const start = writer.begin(2);
    this.time(writer, 1, event.time);
    this.string(writer, 2, event.name);
    if (event.attributes) this.attributes(writer, 3, event.attributes);
    this.varint(writer, 4, event.droppedAttributesCount || 0);
    writer.end(start, 2);
  }

  private link(writer: ProtobufWriter, link: Link & { droppedAttributesCount?: number }): void {
    const context = link.context;
    writer.tag(13, WIRE.lengthDelimited);
    const start = writer.begin(1);
    this.identity(writer, context);
    if (link.attributes) this.attributes(writer, 4, link.attributes);
    this.varint(writer, 5, link.droppedAttributesCount || 0);
    writer.tag(6, WIRE.fixed32);
    writer.fixed32(spanFlags(context, context.isRemote));
    writer.end(start, 1);
  }

  private status(writer: ProtobufWriter, status: SpanStatus): void {
    writer.tag(15, WIRE.lengthDelimited);
    const start = writer.begin(1);
    if (status.message) this.string(writer, 2, status.message);
    this.varint(writer, 3, status.code);
    writer.end(start, 1);
  }

  private attributes(writer: ProtobufWriter, field: number, attributes: Attributes): void {
    for (const key in attributes) {
      if (!Object.hasOwn(attributes, key)) continue;
      writer.tag(field, WIRE.lengthDelimited);
      const start = writer.begin(1);
      writer.raw(this.keyField(key));
      writer.tag(2, WIRE.lengthDelimited);
      const value = writer.begin(1);
      this.anyValue(writer, attributes[key]);
      writer.end(value, 1);
      writer.end(start, 1);
    }
  }

  /** An AnyValue's content. What an attribute cannot be is written as an empty AnyValue. */
  private anyValue(writer: ProtobufWriter, value: unknown): void {
    switch (typeof value) {
      case 'string':
        this.string(writer, 1, value);
        return;
      case 'boolean':
        this.varint(writer, 2, value ? 1 : 0);
        return;
      case 'number':
        if (Number.isInteger(value) && value >= MIN_INT64 && value < MAX_INT64_EXCLUSIVE) {
          this.varint(writer, 3, value);
        } else {
          writer.tag(4, WIRE.fixed64);
          writer.double(value);
        }
        return;
      case 'object':
        break;
      default:
        return;
    }
    if (value === null) return;
    if (value instanceof Uint8Array) {
      writer.tag(7, WIRE.lengthDelimited);
      writer.bytes(value);
    } else if (Array.isArray(value)) {
      writer.tag(5, WIRE.lengthDelimited);
      const array = writer.begin(1);
      for (const item of value) {
        writer.tag(1, WIRE.lengthDelimited);
        const start = writer.begin(1);
        this.anyValue(writer, item);
        writer.end(start, 1);
      }
      writer.end(array, 1);
    } else {
      writer.tag(6, WIRE.lengthDelimited);
      const list = writer.begin(1);
      for (const key in value) {
        if (!Object.hasOwn(value, key)) continue;
        writer.tag(1, WIRE.lengthDelimited);
        const start = writer.begin(1);
        this.string(writer, 1, key);
        writer.tag(2, WIRE.lengthDelimited);
        const item = writer.begin(1);
        this.anyValue(writer, (value as Record<string, unknown>)[key]);
        writer.end(item, 1);
        writer.end(start, 1);
      }
      writer.end(list, 1);
    }
  }

  private keyField(key: string): Uint8Array {
    const cached = this.keys.get(key);
    if (cached !== undefined) return cached;
    const encoded = new ProtobufWriter(key.length * 3 + 8);
    encoded.tag(1, WIRE.lengthDelimited);
    encoded.string(key);
    const field = encoded.take();
    if (this.keys.size < MAX_CACHED_KEYS) this.keys.set(key, field);
    return field;
  }

  private varint(writer: ProtobufWriter, field: number, value: number): void {
    writer.tag(field, WIRE.varint);
    writer.varint(value);
  }

  /** HrTime as fixed64 nanoseconds since the epoch, exactly: the product overflows a double's integers. */
  private time(writer: ProtobufWriter, field: number, [seconds, nanos]: HrTime): void {
    const secondsLow = seconds % 0x1_0000;
    const secondsHigh = (seconds - secondsLow) / 0x1_0000;
    // seconds × 1e9 = secondsHigh × 1e9 × 2^16 + secondsLow × 1e9; each product stays below 2^53.
    const fromLow = secondsLow * NANOS_PER_SECOND + nanos;
    const fromHigh = secondsHigh * NANOS_PER_SECOND;
    const fromHighLow = (fromHigh % 0x1_0000) * 0x1_0000;
    const fromHighHigh = Math.floor(fromHigh / 0x1_0000);
    const lowSum = (fromLow % TWO_POW_32) + fromHighLow;
    const low = lowSum % TWO_POW_32;
    const high = Math.floor(fromLow / TWO_POW_32) + fromHighHigh + Math.floor(lowSum / TWO_POW_32);
    writer.tag(field, WIRE.fixed64);
    writer.fixed64(low, high);
  }
}

function spanFlags(context: SpanContext, isRemote: boolean | undefined): number {
  return (context.traceFlags & 0xff) | HAS_IS_REMOTE | (isRemote ? IS_REMOTE : 0);
}
