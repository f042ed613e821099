import { type Bridge, createBridge } from '../../src/bridge.js';
import { loadConfig } from '../../src/config/config.js';
import type { RunningServer } from '../../src/http/server.js';
import { createLogger } from '../../src/observability/logger.js';
import { createOtelTracing } from '../../src/observability/otel-tracing.js';
import { listenOnLoopback, REPLY_MODE, withinMs } from './bridge.js';
import { AMQP_URL, uniqueName } from './broker.js';

export interface TracedBridge {
  readonly bridge: Bridge;
  readonly server: RunningServer;
  readonly baseUrl: string;
  close(): Promise<void>;
}

/**
 * A real bridge whose tracing exports to `endpoint` (OTLP/HTTP in `protocol`, batches every 20 ms);
 * `sampler` is OTEL_TRACES_SAMPLER (unset: the default).
 */
export async function startTracedBridge(
  endpoint: string,
  sampler?: string,
  protocol: 'http/protobuf' | 'http/json' = 'http/protobuf',
): Promise<TracedBridge> {
  // The SDK reads its own OTEL_* variables from the process, as it does in production.
  const saved = { ...process.env };
  process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = endpoint;
  process.env.OTEL_BSP_SCHEDULE_DELAY = '20';
  if (sampler === undefined) delete process.env.OTEL_TRACES_SAMPLER;
  else process.env.OTEL_TRACES_SAMPLER = sampler;
  const env = {
    AMQP_URL,
    HOST: '127.0.0.1',
    PORT: '0',
    APP_ID: uniqueName('traced-bridge'),
    RPC_REPLY_MODE: REPLY_MODE,
    LOG_LEVEL: 'silent',
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
  };
  const config = loadConfig(env);
  if (config.tracing === undefined) throw new Error('an OTLP endpoint must turn tracing on');
  const tracing = await createOtelTracing(config.tracing);
  process.env = saved;
  const bridge = createBridge(config, createLogger('silent'), { tracing });
  bridge.start();
  await withinMs(bridge.session.whenReady(), 10_000, 'the traced bridge to become ready');
  const server = await listenOnLoopback(bridge.handler, config);
  return {
    bridge,
    server,
    baseUrl: `http://127.0.0.1:${server.port}`,
    async close() {
      bridge.beginShutdown();
      await server.close(1_000);
      await bridge.stop();
    },
  };
}
