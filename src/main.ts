import { createBridge } from './bridge.js';
import { loadConfig } from './config/config.js';
import { ConfigError } from './config/config-error.js';
import { jwtWarnings } from './config/jwt-settings.js';
import { loggableConfig } from './config/redact.js';
import { unknownVariables } from './config/unknown-variables.js';
import { toError } from './errors.js';
import { RoutesFileError } from './http/routes/routes-file.js';
import { listen } from './http/server.js';
import { createLogger, flushLogs } from './observability/logger.js';

/** EX_CONFIG from sysexits.h: the operator must fix the environment. */
const EXIT_CONFIG = 78;
/** After the broker side is closed, how long the last responses get to reach their clients. */
const FINAL_WRITE_MS = 1_000;
/**
 * How long closing the channels and the connection may take: a broker that does not answer
 * close must not hold the exit past the orchestrator's kill timeout. With FINAL_WRITE_MS and
 * LOG_FLUSH_MS this is the ~2.5 s that shutdown adds to SHUTDOWN_GRACE_MS.
 */
const BROKER_CLOSE_MS = 1_000;
/** How long the last log lines may take to reach a slow log collector before the process exits. */
const LOG_FLUSH_MS = 500;

async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`amqp-rpc-bridge: invalid configuration: ${err.message}\n`);
    process.exit(EXIT_CONFIG);
  }
  const logger = createLogger(config.logLevel, undefined, config.logMaxBufferBytes);
  logger.info({ config: loggableConfig(config) }, 'starting');
  // A mistyped variable is otherwise ignored in silence. The name only: a value may be a secret.
  for (const { name, nearest } of unknownVariables(process.env)) {
    logger.warn({ variable: name, nearest }, `unknown environment variable ${name} ignored (did you mean ${nearest}?)`);
  }
  for (const warning of config.jwt === undefined ? [] : jwtWarnings(config.jwt)) logger.warn(warning);

  // The OpenTelemetry SDK is loaded only when tracing is configured.
  const tracing =
    config.tracing === undefined
      ? undefined
      : await (await import('./observability/otel-tracing.js')).createOtelTracing(config.tracing);
  let bridge: ReturnType<typeof createBridge>;
  try {
    // The keys are read once, here: a file that cannot be used stops the start like a bad variable.
    // jose is loaded only when JWTs are accepted.
    const jwt =
      config.jwt === undefined
        ? undefined
        : await (await import('./http/access/jwt-verifier.js')).JwtVerifier.load(config.jwt);
    bridge = createBridge(config, logger, { tracing, jwt });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`amqp-rpc-bridge: invalid configuration: ${err.message}\n`);
      process.exit(EXIT_CONFIG);
    }
    if (!(err instanceof RoutesFileError)) throw err;
    process.stderr.write(`amqp-rpc-bridge: invalid routes file (ROUTES_FILE): ${err.message}\n`);
    process.exit(EXIT_CONFIG);
  }
  bridge.start();
  const server = await listen(bridge.handler, {
    port: config.port,
    host: config.host,
    backlog: config.httpBacklog,
    headersTimeoutMs: config.httpHeadersTimeoutMs,
    requestTimeoutMs: config.httpRequestTimeoutMs,
  });
  logger.info({ port: server.port, host: config.host }, 'listening');
  if (!isLoopback(config.host) && !bridge.credentialsConfigured()) {
    logger.warn(
      { host: config.host },
      'listening beyond loopback with no credential configured: anybody who reaches the port may call (set AUTH_TOKENS, a routes file with tokens, JWT_* or AMQP_IDENTITY=caller)',
    );
  }

  let signalled = false;
  const shutdown = async (signal: NodeJS.Signals): Promise<void> => {
    if (signalled) {
      logger.warn({ signal }, 'second signal: exiting at once');
      await flushLogs(LOG_FLUSH_MS);
      process.exit(1);
    }
    signalled = true;
    logger.info({ signal, delayMs: config.shutdownDelayMs, graceMs: config.shutdownGraceMs }, 'shutting down');
    if (config.shutdownDelayMs > 0) {
      // Not ready, but still serving: a load balancer (or Kubernetes' endpoints) keeps sending for a
      // moment after the signal, and those callers must not be refused.
      bridge.leaveRotation();
      await new Promise((resolve) => setTimeout(resolve, config.shutdownDelayMs));
    }
    // Refusing new RPCs (503) from now on; the load balancer moves traffic elsewhere.
    bridge.beginShutdown();
    // In-flight RPCs may finish within the grace period...
    await bridge.drain(config.shutdownGraceMs);
    // ...what is left is answered 502 (never dropped), then channels and connection close.
    await Promise.race([bridge.stop(), new Promise((resolve) => setTimeout(resolve, BROKER_CLOSE_MS).unref())]);
    // Let those last answers leave, then close every connection.
    await server.close(FINAL_WRITE_MS);
    logger.info({ signal }, 'stopped');
    await flushLogs(LOG_FLUSH_MS);
    process.exit(0);
  };
  // SIGHUP: read the routes file again. A broken file leaves the routes in force as they were.
  process.on('SIGHUP', () => {
    if (config.routesFile === undefined) {
      logger.warn('SIGHUP: no ROUTES_FILE to reload');
      return;
    }
    try {
      const { routes } = bridge.reloadRoutes();
      logger.info({ routesFile: config.routesFile, routes }, 'routes reloaded');
    } catch (err) {
      logger.error(
        { routesFile: config.routesFile, reason: toError(err).message },
        'routes file refused; the routes in force stay',
      );
    }
  });
  process.on('SIGTERM', (signal) => void shutdown(signal));
  process.on('SIGINT', (signal) => void shutdown(signal));
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

main().catch((err: unknown) => {
  process.stderr.write(`amqp-rpc-bridge: failed to start: ${toError(err).message}\n`);
  process.exit(1);
});
