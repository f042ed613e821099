/**
 * The OpenTelemetry SDK as OTEL_* configures it: what the bridge (otel-tracing.ts) and the sample
 * worker share. Import it only when tracing is configured: importing it loads the SDK. The sampler
 * (OTEL_TRACES_SAMPLER, default parentbased_always_on), the exporter's endpoint and headers
 * (OTEL_EXPORTER_OTLP_*), the batch processor (OTEL_BSP_*) and the resource (OTEL_SERVICE_NAME,
 * OTEL_RESOURCE_ATTRIBUTES) are the SDK's own reading of the standard variables.
 */
import {
  type Context,
  createTraceState,
  ROOT_CONTEXT,
  type Span,
  TraceFlags,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  ConsoleSpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';
import type { TracingConfig } from './tracing.js';
import { formatTraceparent, type RemoteParent, type TraceContext } from './w3c-trace-context.js';

export interface OtelTracer {
  readonly tracer: Tracer;
  /** Exports what is buffered and stops; idempotent. */
  shutdown(): Promise<void>;
}

/** A tracer provider of the caller's own (never the global one), exporting in batches. */
export async function startOtelTracer(config: TracingConfig, scope: string): Promise<OtelTracer> {
  const resource = defaultResource()
    .merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: config.serviceName }))
    .merge(detectResources({ detectors: [envDetector] }));
  const provider = new BasicTracerProvider({ resource, spanProcessors: [await spanProcessorFor(config)] });
  let stopping: Promise<void> | undefined;
  return {
    tracer: provider.getTracer(scope),
    shutdown() {
      stopping ??= provider.shutdown();
      return stopping;
    },
  };
}

/** A context whose span is the remote parent: start a span in it to continue the trace. */
export function remoteContext(parent: RemoteParent | undefined): Context {
  if (parent === undefined) return ROOT_CONTEXT;
  return trace.setSpanContext(ROOT_CONTEXT, {
    traceId: parent.traceId,
    spanId: parent.spanId,
    // Only the sampled bit means anything to the SDK's samplers.
    traceFlags: parent.flags & TraceFlags.SAMPLED,
    isRemote: true,
    ...(parent.tracestate === undefined ? {} : { traceState: createTraceState(parent.tracestate) }),
  });
}

/** The W3C headers that make the next hop's span a child of `span`. */
export function messageTraceOf(span: Span): TraceContext {
  const own = span.spanContext();
  const traceparent = formatTraceparent(own.traceId, own.spanId, own.traceFlags & TraceFlags.SAMPLED);
  return { traceparent, tracestate: own.traceState?.serialize() };
}

async function spanProcessorFor(config: TracingConfig): Promise<SpanProcessor> {
  if (config.exporter === 'console') return new BatchSpanProcessor(new ConsoleSpanExporter());
  // Each exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _COMPRESSION itself.
  const { OTLPTraceExporter } =
    config.protocol === 'http/json'
      ? await import('@opentelemetry/exporter-trace-otlp-http')
      : await import('@opentelemetry/exporter-trace-otlp-proto');
  return new BatchSpanProcessor(new OTLPTraceExporter());
}
