/**
 * What the HTTP edge asks of tracing: a server span per request and a producer span per publish.
 * Types only: main.ts imports the SDK behind them (./otel-tracing.ts) only when tracing is configured,
 * so a bridge without OTEL_* loads no OpenTelemetry code and pays nothing for it.
 */
import type { RemoteParent, TraceContext } from './w3c-trace-context.js';

export type { TracingConfig } from '../config/tracing-settings.js';

export interface ServerSpanStart {
  /** The route pattern (`/rpc/:queue`), never the raw path. */
  readonly route: string;
  /** The caller's trace as the edge parsed it, or undefined to start a new one (the sampler decides for it). */
  readonly parent: RemoteParent | undefined;
}

export interface PublishSpanStart {
  readonly operation: 'rpc' | 'publish';
  readonly exchange: string;
  readonly routingKey: string;
  /** How the target appears in metrics and logs (`queue` or `exchange:key`); names the span. */
  readonly label: string;
  readonly bodyBytes: number;
  readonly messageId: string | undefined;
}

export interface RequestSpan {
  /** The trace id when this request is sampled (recorded and exported), else undefined. */
  readonly sampledTraceId: string | undefined;
  /**
   * Starts the producer span, child of the server span. At most once. Returns the message's W3C headers:
   * the producer span's context, so the worker's span is its child.
   */
  startPublish(publish: PublishSpanStart): TraceContext;
  /** The call's correlation id: the conversation id of the producer span. */
  conversation(correlationId: string): void;
  /** Ends the producer span with how the call ended (`reply`, `accepted`, `timeout`, `unroutable`...). */
  endPublish(outcomeKind: string): void;
  /** Ends the server span: the status code sent (499: none, the client left) and the outcome label. */
  end(statusCode: number, outcome: string | undefined, error: Error | undefined): void;
}

export interface Tracing {
  startRequest(start: ServerSpanStart): RequestSpan;
  /** Exports what is buffered and stops; idempotent. */
  shutdown(): Promise<void>;
}
