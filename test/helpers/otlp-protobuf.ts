/**
 * Reads an OTLP ExportTraceServiceRequest in protobuf into the shape OTLP/JSON gives it (ids in hex,
 * 64-bit integers as decimal strings), so a test receiver checks either encoding the same way. Written
 * from opentelemetry/proto (trace/v1/trace.proto, common/v1/common.proto), apart from the bridge's
 * encoder it checks.
 */
import type { OtlpSpan } from './otlp-receiver.js';

type AnyValue = OtlpSpan['attributes'][number]['value'];
interface KeyValue {
  key: string;
  value: AnyValue;
}
export interface OtlpResourceSpans {
  resource: { attributes: KeyValue[] };
  scopeSpans: Array<{ scope: { name: string; version?: string }; spans: OtlpSpan[] }>;
}

class Reader {
  pos = 0;
  constructor(private readonly bytes: Buffer) {}

  get done(): boolean {
    return this.pos >= this.bytes.length;
  }

  varint(): bigint {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      const byte = this.bytes[this.pos++];
      if (byte === undefined) throw new Error('truncated varint');
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7n;
    }
  }

  /** The next field: its number, wire type and content (a reader for length-delimited ones). */
  field(): { number: number; wire: number; value: bigint | Buffer } {
    const key = Number(this.varint());
    const wire = key & 7;
    const number = key >>> 3;
    switch (wire) {
      case 0:
        return { number, wire, value: this.varint() };
      case 1:
        return { number, wire, value: this.take(8) };
      case 2:
        return { number, wire, value: this.take(Number(this.varint())) };
      case 5:
        return { number, wire, value: this.take(4) };
      default:
        throw new Error(`wire type ${wire} at ${this.pos}`);
    }
  }

  private take(length: number): Buffer {
    if (this.pos + length > this.bytes.length) throw new Error('truncated field');
    const slice = this.bytes.subarray(this.pos, this.pos + length);
    this.pos += length;
    return slice;
  }
}

function fields(bytes: Buffer, each: (number: number, value: bigint | Buffer) => void): void {
  const reader = new Reader(bytes);
  while (!reader.done) {
    const { number, value } = reader.field();
    each(number, value);
  }
}

const asBuffer = (value: bigint | Buffer): Buffer => value as Buffer;
const asInt64 = (value: bigint | Buffer): bigint => BigInt.asIntN(64, value as bigint);

function anyValue(bytes: Buffer): AnyValue {
  const value: Record<string, unknown> = {};
  fields(bytes, (number, raw) => {
    if (number === 1) value.stringValue = asBuffer(raw).toString('utf8');
    else if (number === 2) value.boolValue = raw === 1n;
    else if (number === 3) value.intValue = asInt64(raw).toString();
    else if (number === 4) value.doubleValue = asBuffer(raw).readDoubleLE(0);
    else if (number === 5) {
      const values: AnyValue[] = [];
      fields(asBuffer(raw), (n, item) => n === 1 && values.push(anyValue(asBuffer(item))));
      value.arrayValue = { values };
    }
  });
  return value as AnyValue;
}

function keyValue(bytes: Buffer): KeyValue {
  let key = '';
  let value: AnyValue = {};
  fields(bytes, (number, raw) => {
    if (number === 1) key = asBuffer(raw).toString('utf8');
    else if (number === 2) value = anyValue(asBuffer(raw));
  });
  return { key, value };
}

function fixed64(raw: bigint | Buffer): string {
  return asBuffer(raw).readBigUInt64LE(0).toString();
}

function span(bytes: Buffer): OtlpSpan {
  const decoded: OtlpSpan & Record<string, unknown> = { traceId: '', spanId: '', name: '', kind: 0, attributes: [] };
  fields(bytes, (number, raw) => {
    switch (number) {
      case 1:
        decoded.traceId = asBuffer(raw).toString('hex');
        break;
      case 2:
        decoded.spanId = asBuffer(raw).toString('hex');
        break;
      case 3:
        decoded.traceState = asBuffer(raw).toString('utf8');
        break;
      case 4:
        decoded.parentSpanId = asBuffer(raw).toString('hex');
        break;
      case 5:
        decoded.name = asBuffer(raw).toString('utf8');
        break;
      case 6:
        decoded.kind = Number(raw);
        break;
      case 7:
        decoded.startTimeUnixNano = fixed64(raw);
        break;
      case 8:
        decoded.endTimeUnixNano = fixed64(raw);
        break;
      case 9:
        decoded.attributes.push(keyValue(asBuffer(raw)));
        break;
      case 15: {
        const status: { code?: number; message?: string } = {};
        fields(asBuffer(raw), (n, value) => {
          if (n === 2) status.message = asBuffer(value).toString('utf8');
          else if (n === 3) status.code = Number(value);
        });
        decoded.status = status;
        break;
      }
      case 16:
        decoded.flags = asBuffer(raw).readUInt32LE(0);
        break;
    }
  });
  return decoded;
}

export function decodeTraceRequest(bytes: Buffer): { resourceSpans: OtlpResourceSpans[] } {
  const resourceSpans: OtlpResourceSpans[] = [];
  fields(bytes, (number, raw) => {
    if (number !== 1) return;
    const resource: OtlpResourceSpans = { resource: { attributes: [] }, scopeSpans: [] };
    fields(asBuffer(raw), (n, value) => {
      if (n === 1) {
        fields(
          asBuffer(value),
          (m, attribute) => m === 1 && resource.resource.attributes.push(keyValue(asBuffer(attribute))),
        );
      } else if (n === 2) {
        const scopeSpans: OtlpResourceSpans['scopeSpans'][number] = { scope: { name: '' }, spans: [] };
        fields(asBuffer(value), (m, item) => {
          if (m === 1) {
            fields(asBuffer(item), (k, text) => {
              if (k === 1) scopeSpans.scope.name = asBuffer(text).toString('utf8');
              else if (k === 2) scopeSpans.scope.version = asBuffer(text).toString('utf8');
            });
          } else if (m === 2) scopeSpans.spans.push(span(asBuffer(item)));
        });
        resource.scopeSpans.push(scopeSpans);
      }
    });
    resourceSpans.push(resource);
  });
  return { resourceSpans };
}
