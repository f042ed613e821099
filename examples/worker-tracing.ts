/**
 * What the sample worker asks of tracing: one consumer span per request, child of the bridge's
 * producer span. Types and a loader only: the OpenTelemetry SDK (otel-worker-tracing.ts) is imported
 * only when OTEL_* turns tracing on, so a worker without it loads no OpenTelemetry code and pays one
 * `undefined` check per request.
 */
import type { ConsumeMessage } from 'amqplib';
import { loadTracingConfig } from '../src/config/tracing-settings.js';

/**
 * How the worker was done with a request: `replied` (the broker confirmed the reply), `nacked` (the
 * broker refused it), `reply-dropped` (its address is dead, see reply-publisher.ts), `expired` (past
 * the bridge's x-deadline: nobody waits for it), `no-reply-to`, or `failed` (an error, e.g. the
 * channel closed under it).
 */
export type WorkOutcome = 'replied' | 'nacked' | 'reply-dropped' | 'expired' | 'no-reply-to' | 'failed';

export interface ProcessSpan {
  /** This span's W3C headers, for the reply: whoever reads the reply continues the trace from here. */
  readonly replyTrace: { readonly traceparent: string; readonly tracestate: string | undefined };
  /** Ends the span; once the reply is published (or given up). */
  end(outcome: WorkOutcome, error?: unknown): void;
}

export interface WorkerTracing {
  /** Starts the consumer span of one request, continuing the trace in its `traceparent` header. */
  startProcess(queue: string, message: ConsumeMessage): ProcessSpan;
  /** Exports what is buffered and stops; idempotent. */
  shutdown(): Promise<void>;
}

/**
 * Tracing as the OTEL_* variables in `env` ask for it (the bridge's rules: an OTLP endpoint or
 * OTEL_TRACES_EXPORTER turns it on), or undefined, without loading the SDK, when they ask for none.
 * Throws a ConfigError naming the variable when one is invalid.
 */
export async function startWorkerTracing(
  env: Readonly<Record<string, string | undefined>>,
  serviceName: string,
): Promise<WorkerTracing | undefined> {
  const config = loadTracingConfig(env, serviceName);
  if (config === undefined) return undefined;
  const { createOtelWorkerTracing } = await import('./otel-worker-tracing.js');
  return createOtelWorkerTracing(config);
}
