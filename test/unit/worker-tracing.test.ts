import { describe, expect, it } from 'vitest';
import { startWorkerTracing } from '../../examples/worker-tracing.js';
import { ConfigError } from '../../src/config/config-error.js';

describe('the sample worker’s tracing switch', () => {
  it('is off without OTEL_*, and when OTEL_SDK_DISABLED wins over an endpoint', async () => {
    expect(await startWorkerTracing({}, 'echo-worker')).toBeUndefined();
    expect(await startWorkerTracing({ OTEL_TRACES_EXPORTER: 'none' }, 'echo-worker')).toBeUndefined();
    expect(
      await startWorkerTracing(
        { OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' },
        'echo-worker',
      ),
    ).toBeUndefined();
  });

  it('refuses an exporter it does not know, naming the variable', async () => {
    await expect(startWorkerTracing({ OTEL_TRACES_EXPORTER: 'zipkin' }, 'echo-worker')).rejects.toThrow(ConfigError);
    await expect(startWorkerTracing({ OTEL_TRACES_EXPORTER: 'zipkin' }, 'echo-worker')).rejects.toThrow(
      /OTEL_TRACES_EXPORTER/,
    );
  });

  it('is on with an OTLP endpoint, and shuts down cleanly', async () => {
    const tracing = await startWorkerTracing({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9' }, 'echo-worker');
    expect(tracing).toBeDefined();
    await tracing?.shutdown();
  });
});
