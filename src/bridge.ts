import type { RequestListener } from 'node:http';
import { hostname } from 'node:os';
import type { Express } from 'express';
import type { Logger } from 'pino';
import { Registry, type RegistryContentType } from 'prom-client';
import { BrokerSession } from './amqp/broker-session.js';
import type { ReplySource } from './amqp/rpc-channel.js';
import type { Config } from './config/config.js';
import type { BearerTokenVerifier } from './http/access/access-control.js';
import { createHttpEdge } from './http/app.js';
import { Cors } from './http/cors.js';
import { loadOpenApiYaml } from './http/openapi.js';
import type { Readiness } from './http/operational-routes.js';
import { CALLS_PREFIX } from './http/pipeline/defer.js';
import { StreamGate } from './http/pipeline/event-stream.js';
import { RefusalBudget } from './http/refusal-budget.js';
import { buildRouteSet, OPERATIONAL_PATHS, RAW_ROUTE_PREFIXES, type RouteSet } from './http/routes/route-set.js';
import { loadRoutesFile } from './http/routes/routes-file.js';
import { logBytesDropped } from './observability/logger.js';
import { createMetrics, type Metrics, registerGauges } from './observability/metrics.js';
import type { Tracing } from './observability/tracing.js';
import { type BrokerLogin, CallerPools, type CallerSession } from './rpc/caller-pools.js';
import { CallerQuota } from './rpc/caller-quota.js';
import { DeferredCalls } from './rpc/deferred-calls.js';
import { RpcClient } from './rpc/rpc-client.js';

/** Path prefixes no named route may take, and what serves each (the routes file's refusal says it). */
const RAW_PREFIXES_RESERVED = RAW_ROUTE_PREFIXES.map((prefix) => ({
  prefix,
  servedBy: 'which the raw routes serve (turn them off with ROUTES_RAW_ENABLED=false)',
}));
const CALLS_RESERVED = { prefix: CALLS_PREFIX, servedBy: 'where the bridge answers for asynchronous calls' };

/** Everything the process runs, built from the configuration and wired together; nothing listens yet. */
export interface Bridge {
  /** The HTTP request listener: give it to http.createServer (server.ts's `listen`) or to supertest. */
  readonly handler: RequestListener;
  /** The express app behind it (every route but the RPC hot path), for introspection. */
  readonly app: Express;
  readonly rpc: RpcClient;
  readonly metrics: Metrics;
  /** The bridge's own broker session (connection, reply channels, exchange checks). */
  readonly session: BrokerSession;
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
  const metrics = createMetrics(registry, config.metricsMaxQueues);
  const { session, rpc } = openSession(config, logger, metrics, {
    connectionName: `${config.appId}@${hostname()}`,
    urls: config.amqpUrls,
    channels: config.amqpChannels,
  });
  let everConnected = false;
  session.addListener({
    connected() {
      if (everConnected) metrics.amqpReconnects.inc();
      everConnected = true;
    },
  });
  const callerPools =
    config.amqpIdentity === 'caller'
      ? new CallerPools({
          openSession: (login) => openCallerSession(config, logger, metrics, login),
          onLogin: (result) => metrics.callerLogins.labels(result).inc(),
          maxUsers: config.callerMaxUsers,
          idleMs: config.callerIdleMs,
          maxAgeMs: config.callerMaxAgeMs,
          channels: config.callerChannels,
        })
      : undefined;
  const deferred = new DeferredCalls({
    store: session.results,
    resultTtlMs: config.calls.resultTtlMs,
    keyTtlMs: config.calls.keyTtlMs,
    maxHeld: config.calls.maxHeld,
    maxHeldPerCaller: config.calls.maxHeldPerCaller,
    maxWaiting: config.calls.maxWaiting,
    onStoreError: (err) => logger.warn({ err }, "the broker refused an operation on a deferred call's queue"),
  });
  registerGauges(registry, {
    callsHeld: () => deferred.heldCount,
    callsWaiting: () => deferred.waitingCount,
    inFlight: () => rpc.inFlightCount + (callerPools?.inFlightCount ?? 0),
    connected: () => session.isConnected,
    blocked: () => session.isBlocked,
    logBytesDropped,
    callerConnections: () => callerPools?.connectionCount ?? 0,
  });

  let shuttingDown = false;
  let outOfRotation = false;
  let stopping: Promise<void> | undefined;
  const readiness = (): Readiness => {
    const checks = {
      connected: session.isConnected,
      replyConsumers: session.allChannelsOpen,
      notBlocked: !session.isBlocked,
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
            reservedPrefixes: rawRoutes ? [...RAW_PREFIXES_RESERVED, CALLS_RESERVED] : [CALLS_RESERVED],
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
    refusalBudget: new RefusalBudget(config.amqpUrls),
    readiness,
    isShuttingDown: () => shuttingDown,
    tracing,
    callerPools,
    callerQuota: new CallerQuota(config.maxInFlightPerCaller),
    deferred,
    asyncMaxTimeoutMs: config.calls.asyncMaxTimeoutMs,
    streams: {
      maxBufferBytes: config.streamMaxBufferBytes,
      keepAliveMs: config.streamKeepAliveMs,
      gate: new StreamGate(config.streamMaxOpen),
    },
    cors: config.corsAllowedOrigins === undefined ? undefined : new Cors(config.corsAllowedOrigins),
  });

  return {
    handler,
    app,
    rpc,
    metrics,
    session,
    readiness,
    credentialsConfigured: () => routes.current.access.credentialsConfigured,
    reloadRoutes() {
      routes.current = loadRoutes();
      return { routes: routes.current.table?.definitions.length ?? 0 };
    },
    start: () => session.start(),
    leaveRotation() {
      outOfRotation = true;
    },
    beginShutdown() {
      shuttingDown = true;
    },
    async drain(graceMs) {
      let timer: NodeJS.Timeout | undefined;
      const graceOver = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, graceMs);
      });
      await Promise.race([Promise.all([rpc.whenIdle(), callerPools?.whenIdle(), deferred.whenIdle()]), graceOver]);
      clearTimeout(timer);
    },
    stop() {
      shuttingDown = true;
      stopping ??= (async () => {
        rpc.settleAll({ kind: 'lost', reason: 'the bridge is shutting down' });
        await callerPools?.stop();
        await session.stop();
        // The spans of the requests just answered are exported before the process exits.
        await tracing?.shutdown().catch((err: unknown) => logger.warn({ err }, 'exporting the last spans failed'));
      })();
      return stopping;
    },
  };
}

interface SessionShape {
  readonly connectionName: string;
  readonly urls: readonly string[];
  readonly channels: number;
  /** A caller's own login, given apart from the URLs. */
  readonly credentials?: BrokerLogin;
  /** Probe the default exchange like any other (a caller's own user may not write to it). */
  readonly checkDefaultExchange?: boolean;
}

/** One broker session with its RPC core bound to it, counted in the metrics; not started. */
function openSession(
  config: Config,
  logger: Logger,
  metrics: Metrics,
  shape: SessionShape,
): CallerSession & {
  readonly session: BrokerSession;
} {
  const replies: ReplySource =
    config.replyMode === 'queue' ? { mode: 'queue' } : { mode: 'direct', pseudoQueue: config.replyTo };
  const session = new BrokerSession({
    connection: {
      urls: shape.urls,
      reconnectMinMs: config.reconnectMinMs,
      reconnectMaxMs: config.reconnectMaxMs,
      connectionName: shape.connectionName,
      connectOrder: config.amqpConnectOrder,
      heartbeatSeconds: config.amqpHeartbeatSeconds,
      credentials: shape.credentials,
    },
    loginRefusedIsFinal: shape.credentials !== undefined,
    channels: shape.channels,
    replies,
    confirms: config.publisherConfirms,
    exchangeCheckTtlMs: config.exchangeCheckTtlMs,
    exchangeCheckByRoutingKey: config.exchangeCheckByRoutingKey,
    logger,
  });
  session.addListener({
    disconnected: (reason) => logger.warn({ reason }, 'amqp disconnected'),
    channelClosedByBroker: (code) => metrics.channelCloses.labels(String(code)).inc(),
    exchangeVerdict: (verdict) => metrics.exchangeChecks.labels(verdict).inc(),
  });
  const rpc = new RpcClient({
    session,
    appId: config.appId,
    maxInFlight: config.maxInFlight,
    onStrayReply: () => metrics.lateReplies.inc(),
    onSkippedPart: () => metrics.streamPartsSkipped.inc(),
    onBackpressure: () => metrics.publishBackpressure.inc(),
    checkDefaultExchange: shape.checkDefaultExchange,
  });
  return { session, rpc };
}

/** AMQP_IDENTITY=caller: a session made with the caller's own login, its user named in its log lines. */
function openCallerSession(config: Config, logger: Logger, metrics: Metrics, login: BrokerLogin): CallerSession {
  return openSession(config, logger.child({ brokerUser: login.username }), metrics, {
    connectionName: `${config.appId}@${hostname()} for ${login.username}`,
    // The caller's login is given apart (credentials); the password is in no URL and no log line.
    urls: config.amqpUrls.map(withoutLogin),
    channels: config.callerChannels,
    credentials: login,
    checkDefaultExchange: true,
  });
}

/** The broker URL without the bridge's own user: a caller's login is given apart. */
function withoutLogin(url: string): string {
  const parsed = new URL(url);
  parsed.username = '';
  parsed.password = '';
  return parsed.toString();
}
