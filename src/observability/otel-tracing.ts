/**
 * The bridge's spans through the OpenTelemetry SDK (set up from OTEL_* in otel-sdk.ts). Imported only
 * by main.ts, and only when tracing is configured, so the SDK is loaded only then.
 */
import {
  type Attributes,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import {
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
} from '@opentelemetry/semantic-conventions';
import {
  ATTR_MESSAGING_BODY_SIZE,
  ATTR_MESSAGING_CONVERSATION_ID,
  ATTR_MESSAGING_DESTINATION_NAME,
  ATTR_MESSAGING_MESSAGE_ID,
  ATTR_MESSAGING_OPERATION_NAME,
  ATTR_MESSAGING_OPERATION_TYPE,
  ATTR_MESSAGING_RABBITMQ_ROUTING_KEY,
  ATTR_MESSAGING_SYSTEM,
  ATTR_OUTCOME,
} from './messaging-conventions.js';
import { messageTraceOf, remoteContext, startOtelTracer } from './otel-sdk.js';
import type { PublishSpanStart, RequestSpan, ServerSpanStart, Tracing, TracingConfig } from './tracing.js';
import type { TraceContext } from './w3c-trace-context.js';

/** Outcomes that are no failure of the publish: the worker replied, the broker took it, the caller left. */
const PUBLISH_OK = new Set(['reply', 'accepted', 'cancelled']);

export async function createOtelTracing(config: TracingConfig): Promise<Tracing> {
  const { tracer, shutdown } = await startOtelTracer(config, 'amqp-rpc-bridge');
  return {
    startRequest: ({ route, parent }) => new OtelRequestSpan(tracer, route, parent),
    shutdown,
  };
}

/** One request's spans: a class, not a closure per request, as every request makes one. */
class OtelRequestSpan implements RequestSpan {
  readonly sampledTraceId: string | undefined;
  private readonly server: Span;
  private producer: Span | undefined;
  private outcome: string | undefined;

  constructor(
    private readonly tracer: Tracer,
    route: string,
    parent: ServerSpanStart['parent'],
  ) {
    this.server = tracer.startSpan(
      `POST ${route}`,
      { kind: SpanKind.SERVER, attributes: { [ATTR_HTTP_REQUEST_METHOD]: 'POST', [ATTR_HTTP_ROUTE]: route } },
      remoteContext(parent),
    );
    const context = this.server.spanContext();
    const sampled = (context.traceFlags & TraceFlags.SAMPLED) === TraceFlags.SAMPLED;
    this.sampledTraceId = sampled ? context.traceId : undefined;
  }

  startPublish(publish: PublishSpanStart): TraceContext {
    this.producer = this.tracer.startSpan(
      `send ${publish.label}`,
      { kind: SpanKind.PRODUCER, attributes: publishAttributes(publish) },
      trace.setSpan(ROOT_CONTEXT, this.server),
    );
    return messageTraceOf(this.producer);
  }

  conversation(correlationId: string): void {
    this.producer?.setAttribute(ATTR_MESSAGING_CONVERSATION_ID, correlationId);
  }

  endPublish(kind: string): void {
    this.outcome = kind;
    const producer = this.producer;
    if (producer === undefined) return;
    producer.setAttribute(ATTR_OUTCOME, kind);
    if (!PUBLISH_OK.has(kind)) {
      producer.setAttribute(ATTR_ERROR_TYPE, kind);
      producer.setStatus({ code: SpanStatusCode.ERROR, message: kind });
    }
    producer.end();
    this.producer = undefined;
  }

  end(statusCode: number, label: string | undefined, error: Error | undefined): void {
    if (this.producer !== undefined) this.endPublish(this.outcome ?? 'cancelled');
    const server = this.server;
    server.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, statusCode);
    if (label !== undefined) server.setAttribute(ATTR_OUTCOME, label);
    // HTTP server conventions: a 5xx is the server's failure; a 4xx is the caller's, not an error here.
    if (statusCode >= 500) {
      server.setAttribute(ATTR_ERROR_TYPE, error?.name ?? String(statusCode));
      server.setStatus({ code: SpanStatusCode.ERROR, message: label ?? String(statusCode) });
    }
    if (error !== undefined) server.recordException(error);
    server.end();
  }
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
