/**
 * The sample worker's consumer span through the OpenTelemetry SDK, set up from OTEL_* as the bridge's
 * is (src/observability/otel-sdk.ts). Loaded only by startWorkerTracing, when tracing is configured.
 */
import { type Attributes, SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { ATTR_ERROR_TYPE } from '@opentelemetry/semantic-conventions';
import type { ConsumeMessage } from 'amqplib';
import {
  ATTR_MESSAGING_BODY_SIZE,
  ATTR_MESSAGING_CONVERSATION_ID,
  ATTR_MESSAGING_DESTINATION_NAME,
  ATTR_MESSAGING_MESSAGE_ID,
  ATTR_MESSAGING_OPERATION_NAME,
  ATTR_MESSAGING_OPERATION_TYPE,
  ATTR_MESSAGING_RABBITMQ_DELIVERY_TAG,
  ATTR_MESSAGING_RABBITMQ_ROUTING_KEY,
  ATTR_MESSAGING_SYSTEM,
  ATTR_OUTCOME,
} from '../src/observability/messaging-conventions.js';
import { messageTraceOf, remoteContext, startOtelTracer } from '../src/observability/otel-sdk.js';
import type { TracingConfig } from '../src/observability/tracing.js';
import { parseTraceparent } from '../src/observability/w3c-trace-context.js';
import type { ProcessSpan, WorkerTracing, WorkOutcome } from './worker-tracing.js';

/** Outcomes that are the worker's failure; `expired` and `no-reply-to` are nobody waiting, not an error here. */
const FAILED: ReadonlySet<WorkOutcome> = new Set(['failed', 'nacked', 'reply-dropped']);

export async function createOtelWorkerTracing(config: TracingConfig): Promise<WorkerTracing> {
  const { tracer, shutdown } = await startOtelTracer(config, 'amqp-rpc-bridge-echo-worker');
  return {
    startProcess(queue: string, message: ConsumeMessage): ProcessSpan {
      const headers = message.properties.headers ?? {};
      // The bridge sends its producer span's context; an invalid or missing one starts a new trace.
      const parent = parseTraceparent(headers.traceparent, headers.tracestate);
      const span = tracer.startSpan(
        `process ${queue}`,
        { kind: SpanKind.CONSUMER, attributes: processAttributes(queue, message) },
        remoteContext(parent),
      );
      return {
        replyTrace: messageTraceOf(span),
        end(outcome, error) {
          span.setAttribute(ATTR_OUTCOME, outcome);
          if (FAILED.has(outcome)) {
            span.setAttribute(ATTR_ERROR_TYPE, outcome);
            span.setStatus({ code: SpanStatusCode.ERROR, message: outcome });
          }
          if (error instanceof Error) span.recordException(error);
          span.end();
        },
      };
    },
    shutdown,
  };
}

function processAttributes(queue: string, message: ConsumeMessage): Attributes {
  const { fields, properties } = message;
  const attributes: Attributes = {
    [ATTR_MESSAGING_SYSTEM]: 'rabbitmq',
    [ATTR_MESSAGING_OPERATION_TYPE]: 'process',
    [ATTR_MESSAGING_OPERATION_NAME]: 'process',
    // The queue this worker consumes: where, on its side, the request came from.
    [ATTR_MESSAGING_DESTINATION_NAME]: queue,
    [ATTR_MESSAGING_RABBITMQ_DELIVERY_TAG]: fields.deliveryTag,
    [ATTR_MESSAGING_BODY_SIZE]: message.content.length,
  };
  if (fields.routingKey !== '') attributes[ATTR_MESSAGING_RABBITMQ_ROUTING_KEY] = fields.routingKey;
  if (typeof properties.correlationId === 'string') {
    attributes[ATTR_MESSAGING_CONVERSATION_ID] = properties.correlationId;
  }
  if (typeof properties.messageId === 'string') attributes[ATTR_MESSAGING_MESSAGE_ID] = properties.messageId;
  return attributes;
}
