/**
 * Tracing through the OpenTelemetry SDK. Imported only by `startTracing` (tracing.ts), so the SDK is
 * loaded only when tracing is configured. The sampler (OTEL_TRACES_SAMPLER, default
 * parentbased_always_on), the exporter's endpoint and headers (OTEL_EXPORTER_OTLP_*), the batch
 * processor (OTEL_BSP_*) and the resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) are the
 * SDK's own reading of the standard variables.
 */
import {
  type Attributes,
  createTraceState,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  trace,
} from '@opentelemetry/api';
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  ConsoleSpanExporter,
  type SpanExporter,
} from '@opentelemetry/sdk-trace-base';
import {
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
  ATTR_SERVICE_NAME,
} from '@opentelemetry/semantic-conventions';
import type {
  MessageTrace,
  ParentTrace,
  PublishSpanStart,
  RequestSpan,
  ServerSpanStart,
  Tracing,
  TracingConfig,
} from './tracing.js';

// The messaging conventions are still in development: copied here, as the semantic-conventions
// package asks, rather than imported from its unstable `incubating` entry point.
const ATTR_MESSAGING_SYSTEM = 'messaging.system';
const ATTR_MESSAGING_OPERATION_TYPE = 'messaging.operation.type';
const ATTR_MESSAGING_OPERATION_NAME = 'messaging.operation.name';
/** RabbitMQ: the exchange ('' for the default exchange). */
const ATTR_MESSAGING_DESTINATION_NAME = 'messaging.destination.name';
const ATTR_MESSAGING_RABBITMQ_ROUTING_KEY = 'messaging.rabbitmq.destination.routing_key';
const ATTR_MESSAGING_CONVERSATION_ID = 'messaging.message.conversation_id';
const ATTR_MESSAGING_MESSAGE_ID = 'messaging.message.id';
const ATTR_MESSAGING_BODY_SIZE = 'messaging.message.body.size';
/** How the call ended, in the RPC core's words (`reply`, `timeout`, `unroutable`, ...). */
export const ATTR_OUTCOME = 'amqp_rpc_bridge.outcome';

/** Outcomes that are no failure of the publish: the worker replied, the broker took it, the caller left. */
const PUBLISH_OK = new Set(['reply', 'accepted', 'cancelled']);

export async function createOtelTracing(config: TracingConfig): Promise<Tracing> {
  const resource = defaultResource()
    .merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: config.serviceName }))
    .merge(detectResources({ detectors: [envDetector] }));
  const provider = new BasicTracerProvider({
    resource,
    spanProcessors: [new BatchSpanProcessor(await exporterFor(config))],
  });
  const tracer = provider.getTracer('amqp-rpc-bridge');
  let stopping: Promise<void> | undefined;

  const startRequest = ({ route, parent }: ServerSpanStart): RequestSpan => {
    const server = tracer.startSpan(
      `POST ${route}`,
      { kind: SpanKind.SERVER, attributes: { [ATTR_HTTP_REQUEST_METHOD]: 'POST', [ATTR_HTTP_ROUTE]: route } },
      parent === undefined ? ROOT_CONTEXT : remoteContext(parent),
    );
    const context = server.spanContext();
    const sampled = (context.traceFlags & TraceFlags.SAMPLED) === TraceFlags.SAMPLED;
    let producer: Span | undefined;
    let outcome: string | undefined;
    return {
      sampledTraceId: sampled ? context.traceId : undefined,
      startPublish(publish: PublishSpanStart): MessageTrace {
        producer = tracer.startSpan(
          `send ${publish.label}`,
          { kind: SpanKind.PRODUCER, attributes: publishAttributes(publish) },
          trace.setSpan(ROOT_CONTEXT, server),
        );
        const own = producer.spanContext();
        const flags = own.traceFlags & TraceFlags.SAMPLED ? '01' : '00';
        return { traceparent: `00-${own.traceId}-${own.spanId}-${flags}`, tracestate: own.traceState?.serialize() };
      },
      conversation(correlationId) {
        producer?.setAttribute(ATTR_MESSAGING_CONVERSATION_ID, correlationId);
      },
      endPublish(kind) {
        outcome = kind;
        if (producer === undefined) return;
        producer.setAttribute(ATTR_OUTCOME, kind);
        if (!PUBLISH_OK.has(kind)) {
          producer.setAttribute(ATTR_ERROR_TYPE, kind);
          producer.setStatus({ code: SpanStatusCode.ERROR, message: kind });
        }
        producer.end();
        producer = undefined;
      },
      end(statusCode, label, error) {
        if (producer !== undefined) this.endPublish(outcome ?? 'cancelled');
        server.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, statusCode);
        if (label !== undefined) server.setAttribute(ATTR_OUTCOME, label);
        // HTTP server conventions: a 5xx is the server's failure; a 4xx is the caller's, not an error here.
        if (statusCode >= 500) {
          server.setAttribute(ATTR_ERROR_TYPE, error?.name ?? String(statusCode));
          server.setStatus({ code: SpanStatusCode.ERROR, message: label ?? String(statusCode) });
        }
        if (error !== undefined) server.recordException(error);
        server.end();
      },
    };
  };

  return {
    startRequest,
    shutdown() {
      stopping ??= provider.shutdown();
      return stopping;
    },
  };
}

function remoteContext(parent: ParentTrace) {
  return trace.setSpanContext(ROOT_CONTEXT, {
    traceId: parent.traceId,
    spanId: parent.spanId,
    // Only the sampled bit means anything to the SDK's samplers.
    traceFlags: parent.flags & TraceFlags.SAMPLED,
    isRemote: true,
    ...(parent.tracestate === undefined ? {} : { traceState: createTraceState(parent.tracestate) }),
  });
}

function publishAttributes(publish: PublishSpanStart): Attributes {
  const attributes: Attributes = {
    [ATTR_MESSAGING_SYSTEM]: 'rabbitmq',
    [ATTR_MESSAGING_OPERATION_TYPE]: 'send',
    // basic.publish, for an RPC's request as for a publish.
    [ATTR_MESSAGING_OPERATION_NAME]: 'publish',
    [ATTR_MESSAGING_DESTINATION_NAME]: publish.exchange,
    [ATTR_MESSAGING_BODY_SIZE]: publish.bodyBytes,
  };
  if (publish.routingKey !== '') attributes[ATTR_MESSAGING_RABBITMQ_ROUTING_KEY] = publish.routingKey;
  if (publish.messageId !== undefined) attributes[ATTR_MESSAGING_MESSAGE_ID] = publish.messageId;
  return attributes;
}

async function exporterFor(config: TracingConfig): Promise<SpanExporter> {
  if (config.exporter === 'console') return new ConsoleSpanExporter();
  // Each reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _COMPRESSION itself.
  if (config.protocol === 'http/json') {
    const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http');
    return new OTLPTraceExporter();
  }
  const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-proto');
  return new OTLPTraceExporter();
}
