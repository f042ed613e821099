import { createBridge } from './bridge.js';
import { ConfigError, loadConfig, loggableConfig } from './config.js';
import { toError } from './errors.js';
import { createLogger } from './logger.js';
import { listen } from './server.js';

/** EX_CONFIG from sysexits.h: the operator must fix the environment. */
const EXIT_CONFIG = 78;
/** After the broker side is closed, how long the last responses get to reach their clients. */
const FINAL_WRITE_MS = 1_000;

async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`amqp-rpc-bridge: invalid configuration: ${err.message}\n`);
    process.exit(EXIT_CONFIG);
  }
  const logger = createLogger(config.logLevel);
  logger.info({ config: loggableConfig(config) }, 'starting');

  const bridge = createBridge(config, logger);
  bridge.start();
  const server = await listen(bridge.handler, {
    port: config.port,
    host: config.host,
    backlog: config.httpBacklog,
    headersTimeoutMs: config.httpHeadersTimeoutMs,
    requestTimeoutMs: config.httpRequestTimeoutMs,
  });
  logger.info({ port: server.port, host: config.host }, 'listening');

  let signalled = false;
  const shutdown = async (signal: NodeJS.Signals): Promise<void> => {
    if (signalled) {
      logger.warn({ signal }, 'second signal: exiting at once');
      logger.flush();
      process.exit(1);
    }
    signalled = true;
    logger.info({ signal, graceMs: config.shutdownGraceMs }, 'shutting down');
    // Not ready and refusing new RPCs (503) at once; the load balancer moves traffic elsewhere.
    bridge.beginShutdown();
    // In-flight RPCs may finish within the grace period...
    await bridge.drain(config.shutdownGraceMs);
    // ...what is left is answered 502 (never dropped), then channels and connection close.
    await bridge.stop();
    // Let those last answers leave, then close every connection.
    await server.close(FINAL_WRITE_MS);
    logger.info({ signal }, 'stopped');
    logger.flush();
    process.exit(0);
  };
  process.on('SIGTERM', (signal) => void shutdown(signal));
  process.on('SIGINT', (signal) => void shutdown(signal));
}

main().catch((err: unknown) => {
  process.stderr.write(`amqp-rpc-bridge: failed to start: ${toError(err).message}\n`);
  process.exit(1);
});
