import { type Env, EnvReader } from './env-reader.js';

/** How tracing is configured (from OTEL_*; the SDK reads its other OTEL_* variables itself). */
export interface TracingConfig {
  readonly exporter: 'otlp' | 'console';
  readonly protocol: 'http/protobuf' | 'http/json';
  /** service.name when OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) sets none. */
  readonly serviceName: string;
}

/**
 * The tracing part alone, for a process beside the bridge (the sample worker): the same OTEL_*
 * variables and rules, without the bridge's own. `serviceName` is used when OTEL_SERVICE_NAME is unset.
 */
export function loadTracingConfig(env: Env, serviceName: string): TracingConfig | undefined {
  return tracingConfig(new EnvReader(env), serviceName);
}

/**
 * Tracing is off unless asked for, whatever the OpenTelemetry default (`otlp`) would be: a bridge
 * nobody collects traces from must not try to send them. OTEL_SDK_DISABLED=true always wins.
 */
export function tracingConfig(read: EnvReader, serviceName: string): TracingConfig | undefined {
  const disabled = read.boolean('OTEL_SDK_DISABLED', false);
  const endpoint =
    read.string('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', '') || read.string('OTEL_EXPORTER_OTLP_ENDPOINT', '');
  const exporter = read.oneOf('OTEL_TRACES_EXPORTER', ['otlp', 'console', 'none'] as const, endpoint ? 'otlp' : 'none');
  const protocols = ['http/protobuf', 'http/json'] as const;
  const general = read.oneOf('OTEL_EXPORTER_OTLP_PROTOCOL', protocols, 'http/protobuf');
  const protocol = read.oneOf('OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', protocols, general);
  if (disabled || exporter === 'none') return undefined;
  return { exporter, protocol, serviceName };
}
