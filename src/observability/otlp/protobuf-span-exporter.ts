/**
 * OTLP/HTTP with protobuf, the default OTLP transport: the SDK's exporter machinery
 * (OTEL_EXPORTER_OTLP_* read by the SDK, its HTTP transport, retries, timeouts and response handling)
 * sending requests the bridge's processor has already encoded (encoding-batch-processor.ts).
 */
import { OTLPExporterBase } from '@opentelemetry/otlp-exporter-base';
import { convertLegacyHttpOptions, createOtlpHttpExportDelegate } from '@opentelemetry/otlp-exporter-base/node-http';
import {
  type IExporterMetricsHelper,
  type IExportTraceServiceResponse,
  type ISerializer,
  ProtobufTraceSerializer,
} from '@opentelemetry/otlp-transformer';
import type { EncodedSpanExporter, EncodedSpans } from './encoding-batch-processor.js';

/** The component type the SDK's own OTLP/HTTP span exporter reports in its self-observability metrics. */
const COMPONENT_TYPE = 'otlp_http_span_exporter';

export function createProtobufSpanExporter(): EncodedSpanExporter {
  const serializer: ISerializer<EncodedSpans, IExportTraceServiceResponse> = {
    serializeRequest: (request) => request.bytes,
    deserializeResponse: (data) => ProtobufTraceSerializer.deserializeResponse(data),
  };
  const counted: IExporterMetricsHelper<EncodedSpans> = { name: 'span', countItems: (request) => request.spanCount };
  const options = convertLegacyHttpOptions({}, 'TRACES', 'v1/traces', { 'Content-Type': 'application/x-protobuf' });
  return new OTLPExporterBase(createOtlpHttpExportDelegate(options, serializer, COMPONENT_TYPE, counted, undefined));
}
