import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { waitFor } from './bridge.js';
import { decodeTraceRequest } from './otlp-protobuf.js';

/** A span as an OTLP/HTTP JSON export carries it (ids in hex, kind and status code as numbers). */
export interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  /** Nanoseconds since the epoch, as a decimal string. */
  startTimeUnixNano?: string;
  endTimeUnixNano?: string;
  attributes: Array<{
    key: string;
    value: { stringValue?: string; intValue?: number | string; boolValue?: boolean; doubleValue?: number };
  }>;
  status?: { code?: number; message?: string };
  traceState?: string;
  /** W3C trace flags in the low byte, and whether the parent is remote (0x100 known, 0x200 remote). */
  flags?: number;
  /** Not OTLP's: the `service.name` of the resource it came with, added by the receiver. */
  service?: string | undefined;
}

/** OTLP's SpanKind numbers. */
export const SERVER = 2;
export const PRODUCER = 4;
export const CONSUMER = 5;
export const STATUS_ERROR = 2;

/**
 * An OTLP/HTTP receiver, protobuf (the default encoding) or JSON as the Content-Type says: what an
 * exporter really sends, over a real socket.
 */
export class OtlpReceiver {
  readonly spans: OtlpSpan[] = [];
  readonly services = new Set<string>();
  /** The Content-Types exports came with. */
  readonly encodings = new Set<string>();
  private readonly server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const encoding = String(req.headers['content-type']);
      this.encodings.add(encoding);
      const protobuf = encoding === 'application/x-protobuf';
      const bytes = Buffer.concat(chunks);
      const body = protobuf
        ? decodeTraceRequest(bytes)
        : (JSON.parse(bytes.toString('utf8')) as ReturnType<typeof decodeTraceRequest>);
      for (const resource of body.resourceSpans) {
        const service = resource.resource.attributes.find((a) => a.key === 'service.name')?.value.stringValue;
        if (service !== undefined) this.services.add(service);
        for (const scope of resource.scopeSpans) this.spans.push(...scope.spans.map((span) => ({ ...span, service })));
      }
      // An empty ExportTraceServiceResponse: full success, in either encoding.
      res.setHeader('Content-Type', protobuf ? 'application/x-protobuf' : 'application/json');
      res.end(protobuf ? '' : '{}');
    });
  });

  /** Listens on a free loopback port; resolves with the URL to set as OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. */
  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/v1/traces`;
  }

  inTrace(traceId: string): OtlpSpan[] {
    return this.spans.filter((span) => span.traceId === traceId);
  }

  /** Waits until `count` spans of the trace have arrived (exporters batch: they come in any order). */
  async waitForSpans(traceId: string, count: number): Promise<OtlpSpan[]> {
    await waitFor(() => this.inTrace(traceId).length >= count, 5_000, `${count} spans of trace ${traceId}`);
    return this.inTrace(traceId);
  }

  /** The bridge's two spans of a trace, once `count` spans of it have arrived. */
  async waitForTrace(traceId: string, count: number): Promise<{ server: OtlpSpan; producer: OtlpSpan }> {
    const spans = await this.waitForSpans(traceId, count);
    return { server: onlyOfKind(spans, SERVER), producer: onlyOfKind(spans, PRODUCER) };
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** The one span of that kind; throws, showing them all, when there is none or more than one. */
export function onlyOfKind(spans: readonly OtlpSpan[], kind: number): OtlpSpan {
  const found = spans.filter((span) => span.kind === kind);
  if (found.length !== 1) throw new Error(`${found.length} spans of kind ${kind}, not one: ${JSON.stringify(spans)}`);
  return found[0] as OtlpSpan;
}

/** A span's attributes as a plain object (OTLP/JSON sends 64-bit integers as strings). */
export function attributes(span: OtlpSpan): Record<string, string | number> {
  return Object.fromEntries(
    span.attributes.map(({ key, value }) => [key, value.stringValue ?? Number(value.intValue)]),
  );
}
