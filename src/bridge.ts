import type { RequestListener } from 'node:http';
import { hostname } from 'node:os';
import type { Express } from 'express';
import type { Logger } from 'pino';
import { Registry, type RegistryContentType } from 'prom-client';
import { CallerBrokerPools } from './caller-brokers.js';
import type { Config } from './config/config.js';
import type { BearerTokenVerifier } from './http/access/access-control.js';
import { CallerQuota } from './http/access/caller-quota.js';
import { createHttpEdge } from './http/app.js';
import { loadOpenApiYaml } from './http/openapi.js';
import type { Readiness } from './http/operational-routes.js';
import { buildRouteSet, OPERATIONAL_PATHS, RAW_ROUTE_PREFIXES, type RouteSet } from './http/routes/route-set.js';
import { loadRoutesFile } from './http/routes/routes-file.js';
import { logBytesDropped } from './observability/logger.js';
import { createMetrics, type Metrics } from './observability/metrics.js';
import type { Tracing } from './observability/tracing.js';
import type { RpcClient } from './rpc/rpc-client.js';
import { createRpcStack, type RpcStack } from './rpc-stack.js';

const DRAIN_POLL_MS = 20;

/** Everything the process runs, built from the configuration and wired together; nothing listens yet. */
export interface Bridge {
  /** The HTTP request listener: give it to http.createServer (server.ts's `listen`) or to supertest. */
  readonly handler: RequestListener;
  /** The express app behind it (every route but the RPC hot path), for introspection. */
  readonly app: Express;
  readonly rpc: RpcClient;
  readonly metrics: Metrics;
  readonly connection: RpcStack['connection'];
  readonly pool: RpcStack['pool'];
  readiness(): Readiness;
  /** Whether any credential (tokens, JWTs, broker logins) is configured: without one, anybody may call. */
  credentialsConfigured(): boolean;
  /**
   * Reads the routes file again and swaps routes, tokens and contract at once; requests under way
   * finish on the routes they arrived on. Throws RoutesFileError (the old routes stay) when invalid.
   */
  reloadRoutes(): { readonly routes: number };
  /** Connects to the broker in the background; /readyz tells when it is up. */
  start(): void;
  /** Refuses new RPCs (503) and reports not ready from now on; in-flight ones still finish. */
  beginShutdown(): void;
  /**
   * Reports not ready (so load balancers and Kubernetes stop sending) while still serving RPCs:
   * the first step of a shutdown with SHUTDOWN_DELAY_MS.
   */
  leaveRotation(): void;
  /** Resolves when no RPC is in flight, or after `graceMs`, whichever comes first. */
  drain(graceMs: number): Promise<void>;
  /** Answers what is still in flight (502), then closes channels and the connection. Idempotent. */
  stop(): Promise<void>;
}

export interface BridgeOptions {
  /** Spans for each request (main.ts starts it when config.tracing is set); stopped with the bridge. */
  readonly tracing?: Tracing | undefined;
  /** Verifies JWT bearer tokens, when JWT_* is configured. */
  readonly jwt?: BearerTokenVerifier | undefined;
}

export function createBridge(config: Config, logger: Logger, options: BridgeOptions = {}): Bridge {
  const { tracing } = options;
  // The gauges read connection and client state when scraped (both are declared below).
  // With tracing, the request-duration histograms keep exemplars (trace ids), which need OpenMetrics.
  const registry = new Registry<RegistryContentType>();
  if (tracing !== undefined) registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
  const metrics = createMetrics(registry, config.metricsMaxQueues, {
    inFlight: () => rpc.inFlightCount + (callerBrokers?.inFlightCount ?? 0),
    connected: () => connection.isConnected,
    blocked: () => connection.isBlocked,
    logBytesDropped,
    callerConnections: () => callerBrokers?.connectionCount ?? 0,
  });
  const { connection, pool, rpc } = createRpcStack({
    urls: config.amqpUrls,
    connectionName: `${config.appId}@${hostname()}`,
    channels: config.amqpChannels,
    config,
    logger,
    metrics,
  });
  const callerBrokers =
    config.amqpIdentity === 'caller'
      ? new CallerBrokerPools({
          config,
          logger,
          metrics,
          maxUsers: config.callerMaxUsers,
          idleMs: config.callerIdleMs,
          maxAgeMs: config.callerMaxAgeMs,
          channels: config.callerChannels,
        })
      : undefined;
  let everConnected = false;
  connection.addListener({
    connected() {
      if (everConnected) metrics.amqpReconnects.inc();
      everConnected = true;
    },
    disconnected() {},
    blockedChanged() {},
  });

  let shuttingDown = false;
  let outOfRotation = false;
  let stopping: Promise<void> | undefined;
  const readiness = (): Readiness => {
    const checks = {
      connected: connection.isConnected,
      replyConsumers: pool.allOpen,
      notBlocked: !connection.isBlocked,
      notShuttingDown: !shuttingDown && !outOfRotation,
    };
    return { ready: Object.values(checks).every(Boolean), checks };
  };

  const limits = { defaultTimeoutMs: config.rpcTimeoutMs, maxTimeoutMs: config.rpcMaxTimeoutMs };
  const baseOpenApiYaml = loadOpenApiYaml();
  const loadRoutes = (): RouteSet => {
    const { routesFile: fileName, routesRawEnabled: rawRoutes } = config;
    const file =
      fileName === undefined
        ? undefined
        : loadRoutesFile(fileName, {
            maxTimeoutMs: config.rpcMaxTimeoutMs,
            maxBodyBytes: config.maxBodyBytes,
            reservedPaths: OPERATIONAL_PATHS,
            reservedPrefixes: rawRoutes ? RAW_ROUTE_PREFIXES : [],
          });
    return buildRouteSet({
      file,
      fileName,
      rawRoutes,
      rawRoles: config.routesRawRoles,
      authTokens: config.authTokens,
      jwt: options.jwt,
      allowedQueues: config.allowedQueues,
      allowedExchanges: config.allowedExchanges,
      brokerLogins: config.amqpIdentity === 'caller',
      limits,
      maxBodyBytes: config.maxBodyBytes,
      baseOpenApiYaml,
    });
  };
  const routes = { current: loadRoutes() };

  const { app, handler } = createHttpEdge({
    routes,
    protectMetrics: config.authProtectMetrics,
    rpc,
    metrics,
    logger,
    limits,
    maxBodyBytes: config.maxBodyBytes,
    readiness,
    isShuttingDown: () => shuttingDown,
    tracing,
    callerBrokers,
    callerQuota: new CallerQuota(config.maxInFlightPerCaller),
  });

  return {
    handler,
    app,
    rpc,
    metrics,
    connection,
    pool,
    readiness,
    credentialsConfigured: () => routes.current.access.credentialsConfigured,
    reloadRoutes() {
      routes.current = loadRoutes();
      return { routes: routes.current.table?.definitions.length ?? 0 };
    },
    start: () => connection.start(),
    leaveRotation() {
      outOfRotation = true;
    },
    beginShutdown() {
      shuttingDown = true;
    },
    async drain(graceMs) {
      const deadline = Date.now() + graceMs;
      const inFlight = () => rpc.inFlightCount + (callerBrokers?.inFlightCount ?? 0);
      while (inFlight() > 0 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, DRAIN_POLL_MS));
      }
    },
    stop() {
      shuttingDown = true;
      stopping ??= (async () => {
        rpc.settleAll({ kind: 'lost', reason: 'the bridge is shutting down' });
        await callerBrokers?.stop();
        await pool.stop();
        await connection.stop();
        // The spans of the requests just answered are exported before the process exits.
        await tracing?.shutdown().catch((err: unknown) => logger.warn({ err }, 'exporting the last spans failed'));
      })();
      return stopping;
    },
  };
}
