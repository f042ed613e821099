/**
 * Environment -> validated, frozen, typed configuration. The config/ folder is the only place that
 * reads environment variables, and it imports nothing above it; everything else receives a Config.
 */

import { ConfigError } from './config-error.js';
import { type Env, EnvReader } from './env-reader.js';
import { type JwtSettings, jwtSettingsFromEnv } from './jwt-settings.js';
import { type TracingConfig, tracingConfig } from './tracing-settings.js';

export const REPLY_TO_QUEUES = ['amq.rabbitmq.reply-to', 'amq.direct.reply-to'] as const;
export type ReplyToQueue = (typeof REPLY_TO_QUEUES)[number];

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Config {
  readonly host: string;
  readonly port: number;
  /** Connections the kernel may queue before the bridge accepts them (capped by net.core.somaxconn). */
  readonly httpBacklog: number;
  /** How long a client may take to send its headers, and its whole request (a slow body is cut off). */
  readonly httpHeadersTimeoutMs: number;
  readonly httpRequestTimeoutMs: number;
  /**
   * Broker URLs including credentials, tried in turn: never log them, use `loggableConfig`. One
   * for a single broker; several (cluster nodes, or a standby) to fail over on connection loss.
   */
  readonly amqpUrls: readonly string[];
  /**
   * `random`: start at a random URL of the list, so that replicas spread over a cluster's nodes.
   * `listed`: start at the first (a primary and its standby).
   */
  readonly amqpConnectOrder: 'random' | 'listed';
  /**
   * AMQP heartbeat the bridge asks for (a URL's own `?heartbeat=` wins). A broker that goes silent
   * (a partition, a dead host) is noticed after two to three of these.
   */
  readonly amqpHeartbeatSeconds: number;
  readonly amqpChannels: number;
  readonly replyTo: ReplyToQueue;
  /** `direct`: direct reply-to (no queue). `queue`: one exclusive, server-named callback queue per channel. */
  readonly replyMode: 'direct' | 'queue';
  /** Publisher confirms on the request channels: a broker nack answers 503 at once. */
  readonly publisherConfirms: boolean;
  /** RPCs in flight beyond which new ones are refused with 503. */
  readonly maxInFlight: number;
  /** Requests in flight from one caller beyond which its new ones are refused with 429 (default: half of maxInFlight). */
  readonly maxInFlightPerCaller: number;
  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
  readonly rpcTimeoutMs: number;
  readonly rpcMaxTimeoutMs: number;
  /** Calls that outlive their HTTP request (Prefer: respond-async) and idempotency keys. */
  readonly calls: CallsSettings;
  readonly maxBodyBytes: number;
  readonly exchangeCheckTtlMs: number;
  /** Check each exchange and routing key, not each exchange (RabbitMQ's topic permissions decide per key). */
  readonly exchangeCheckByRoutingKey: boolean;
  readonly metricsMaxQueues: number;
  /**
   * How long in-flight RPCs may finish after SIGTERM. Shutdown takes at most this plus ~2 s (broker
   * close, last writes), which must stay below the orchestrator's kill timeout (docker stop: 10 s).
   */
  readonly shutdownGraceMs: number;
  /**
   * After SIGTERM, how long the bridge reports not ready while still serving RPCs, before it refuses
   * new ones: time for a load balancer's health checks or Kubernetes' endpoints to move traffic away.
   */
  readonly shutdownDelayMs: number;
  readonly logLevel: LogLevel;
  /** Log bytes held for a stdout that does not keep up; past it, lines are dropped (and counted). */
  readonly logMaxBufferBytes: number;
  readonly appId: string;
  /** Bearer tokens that may call the bridge; empty means no authentication. Secret: never logged. */
  readonly authTokens: readonly string[];
  /** Whether /metrics also needs a token (health endpoints never do: probes must reach them). */
  readonly authProtectMetrics: boolean;
  /** Glob patterns of queues callers may address; undefined means any (except reserved `amq.` names). */
  readonly allowedQueues: readonly string[] | undefined;
  /** Glob patterns of exchanges callers may address; undefined means any. */
  readonly allowedExchanges: readonly string[] | undefined;
  /**
   * Spans through OpenTelemetry, or undefined (the default): off unless OTEL_TRACES_EXPORTER names an
   * exporter or an OTLP endpoint is set. The SDK reads its other OTEL_* variables itself.
   */
  readonly tracing: TracingConfig | undefined;
  /** Named routes (YAML), read at start-up and again on SIGHUP; undefined: only the raw routes. */
  readonly routesFile: string | undefined;
  /** Whether POST /rpc/... and /publish/... are served: by default only without a routes file. */
  readonly routesRawEnabled: boolean;
  /** ROUTES_RAW_ROLES: the raw routes need one of these roles (from a routes-file token or a JWT). */
  readonly routesRawRoles: readonly string[] | undefined;
  /**
   * `bridge`: every request goes over the bridge's own connection (AMQP_URL's user). `caller`: over
   * a connection made with the caller's broker credentials, so the broker's permissions apply per caller.
   */
  readonly amqpIdentity: 'bridge' | 'caller';
  readonly callerMaxUsers: number;
  readonly callerIdleMs: number;
  /** A caller's connection takes no new calls after this long (a rotated password stops working within it). */
  readonly callerMaxAgeMs: number;
  readonly callerChannels: number;
  /** JWT bearer tokens (JWT_* variables): verified, their roles usable by named routes; undefined: off. */
  readonly jwt: JwtSettings | undefined;
  /**
   * Bytes a streaming caller (`Accept: text/event-stream`) may leave unread before its stream ends
   * with an overflow event: what one slow reader can hold of the bridge's memory (plus one event).
   */
  readonly streamMaxBufferBytes: number;
  /** How long a stream may stay silent before a comment line keeps proxies from closing it. */
  readonly streamKeepAliveMs: number;
  /** Streams open at once; past it, 503 before the 200 (STREAM_MAX_OPEN). */
  readonly streamMaxOpen: number;
  /** Origins browsers may call the RPC and publish routes from (`*`: any); undefined: no CORS headers at all. */
  readonly corsAllowedOrigins: readonly string[] | undefined;
}

export interface CallsSettings {
  /** Largest timeout an asynchronous call may ask for (ASYNC_MAX_TIMEOUT_MS). */
  readonly asyncMaxTimeoutMs: number;
  /** How long an asynchronous call's reply is kept after the call's deadline (ASYNC_RESULT_TTL_MS). */
  readonly resultTtlMs: number;
  /** How long an idempotency key answers for its first request (IDEMPOTENCY_TTL_MS). */
  readonly keyTtlMs: number;
  readonly maxHeld: number;
  readonly maxHeldPerCaller: number;
  readonly maxWaiting: number;
}

/** An origin as browsers send it (RFC 6454 serialization): scheme, host and maybe port; no path. */
const ORIGIN = /^https?:\/\/[^/\s?#@]+$/;

/** RabbitMQ 3 and LavinMQ refuse messages above 128 MiB by default (RabbitMQ 4: 16 MiB, docs/configuration.md). */
const MAX_BODY_CEILING = 128 * 1024 * 1024;

export function loadConfig(env: Env): Config {
  const read = new EnvReader(env);
  const rpcMaxTimeoutMs = read.integer('RPC_MAX_TIMEOUT_MS', 300_000, 1, 2_147_483_647);
  const rpcTimeoutMs = read.integer('RPC_TIMEOUT_MS', 30_000, 1, rpcMaxTimeoutMs);
  const reconnectMinMs = read.integer('AMQP_RECONNECT_MIN_MS', 100, 1, 600_000);
  const httpHeadersTimeoutMs = read.integer('HTTP_HEADERS_TIMEOUT_MS', 10_000, 100, 600_000);
  const httpRequestTimeoutMs = read.integer('HTTP_REQUEST_TIMEOUT_MS', 30_000, 100, 3_600_000);
  // node:http's createServer throws on this later, in its own words; say it here, naming both.
  if (httpHeadersTimeoutMs > httpRequestTimeoutMs) {
    throw new ConfigError(
      `HTTP_HEADERS_TIMEOUT_MS (${httpHeadersTimeoutMs}) must not exceed HTTP_REQUEST_TIMEOUT_MS (${httpRequestTimeoutMs}): the headers are part of the request`,
    );
  }
  const appId = read.string('APP_ID', 'amqp-rpc-bridge');
  const maxInFlight = read.integer('MAX_IN_FLIGHT', 10_000, 1, 10_000_000);
  const routesFile = read.optionalString('ROUTES_FILE');
  const config: Config = {
    host: read.string('HOST', '0.0.0.0'),
    port: read.integer('PORT', 8080, 0, 65_535),
    httpBacklog: read.integer('HTTP_BACKLOG', 4096, 1, 65_535),
    httpHeadersTimeoutMs,
    httpRequestTimeoutMs,
    amqpUrls: read.amqpUrls('AMQP_URLS', 'AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672'),
    amqpConnectOrder: read.oneOf('AMQP_CONNECT_ORDER', ['random', 'listed'] as const, 'random'),
    // Two to three of these until a silent broker is noticed: at most 15 s by default.
    amqpHeartbeatSeconds: read.integer('AMQP_HEARTBEAT_SECONDS', 5, 0, 600),
    amqpChannels: read.integer('AMQP_CHANNELS', 4, 1, 256),
    replyTo: read.oneOf('AMQP_REPLY_TO', REPLY_TO_QUEUES, 'amq.rabbitmq.reply-to'),
    replyMode: read.oneOf('RPC_REPLY_MODE', ['direct', 'queue'] as const, 'direct'),
    publisherConfirms: read.boolean('AMQP_PUBLISHER_CONFIRMS', true),
    maxInFlight,
    // One caller's flood leaves the other half for everybody else.
    maxInFlightPerCaller: read.integer(
      'MAX_IN_FLIGHT_PER_CALLER',
      Math.max(1, Math.floor(maxInFlight / 2)),
      1,
      10_000_000,
    ),
    reconnectMinMs,
    // A broker back from an outage should not wait long for the bridge: the soak saw 5.8 s at a 30 s cap.
    reconnectMaxMs: read.integer('AMQP_RECONNECT_MAX_MS', 5_000, reconnectMinMs, 3_600_000),
    rpcTimeoutMs,
    rpcMaxTimeoutMs,
    calls: callsSettings(read, rpcMaxTimeoutMs),
    maxBodyBytes: read.integer('MAX_BODY_BYTES', 1024 * 1024, 0, MAX_BODY_CEILING),
    exchangeCheckTtlMs: read.integer('EXCHANGE_CHECK_TTL_MS', 5_000, 0, 3_600_000),
    exchangeCheckByRoutingKey: read.boolean('EXCHANGE_CHECK_BY_ROUTING_KEY', false),
    metricsMaxQueues: read.integer('METRICS_MAX_QUEUES', 100, 1, 100_000),
    // 7 s + ~2 s to close stays inside docker stop's default 10 s before SIGKILL.
    shutdownGraceMs: read.integer('SHUTDOWN_GRACE_MS', 7_000, 0, 3_600_000),
    shutdownDelayMs: read.integer('SHUTDOWN_DELAY_MS', 0, 0, 3_600_000),
    logLevel: read.oneOf('LOG_LEVEL', LOG_LEVELS, 'info'),
    logMaxBufferBytes: read.integer('LOG_MAX_BUFFER_BYTES', 16 * 1024 * 1024, 64 * 1024, 1024 * 1024 * 1024),
    appId,
    authTokens: read.tokens('AUTH_TOKENS', 'AUTH_TOKENS_FILE'),
    authProtectMetrics: read.boolean('AUTH_PROTECT_METRICS', false),
    allowedQueues: read.list('ALLOWED_QUEUES'),
    allowedExchanges: read.list('ALLOWED_EXCHANGES'),
    tracing: tracingConfig(read, appId),
    routesFile,
    // With a routes file, the operator chose what callers may reach: the raw routes would go around it.
    routesRawEnabled: read.boolean('ROUTES_RAW_ENABLED', routesFile === undefined),
    routesRawRoles: read.list('ROUTES_RAW_ROLES'),
    amqpIdentity: read.oneOf('AMQP_IDENTITY', ['bridge', 'caller'] as const, 'bridge'),
    callerMaxUsers: read.integer('AMQP_CALLER_MAX_USERS', 100, 1, 10_000),
    callerIdleMs: read.integer('AMQP_CALLER_IDLE_MS', 60_000, 1_000, 86_400_000),
    callerMaxAgeMs: read.integer('AMQP_CALLER_MAX_AGE_MS', 900_000, 1_000, 86_400_000),
    callerChannels: read.integer('AMQP_CALLER_CHANNELS', 1, 1, 64),
    jwt: jwtSettingsFromEnv(env),
    streamMaxBufferBytes: read.integer('STREAM_MAX_BUFFER_BYTES', 1024 * 1024, 1024, 1024 * 1024 * 1024),
    // Below the 30 s to 60 s after which common proxies and load balancers close an idle connection.
    streamKeepAliveMs: read.integer('STREAM_KEEPALIVE_MS', 15_000, 100, 3_600_000),
    // With STREAM_MAX_BUFFER_BYTES, what slow streaming callers may hold together: 1 GiB by default.
    streamMaxOpen: read.integer('STREAM_MAX_OPEN', 1_000, 1, 1_000_000),
    corsAllowedOrigins: corsOrigins(read.list('CORS_ALLOWED_ORIGINS')),
  };
  // Every call then needs a broker login, which an AUTH_TOKENS token does not carry: its holders would
  // all get 401, while the README promises the credentials combine. Say so now, and what works.
  if (config.amqpIdentity === 'caller' && config.authTokens.length > 0) {
    throw new ConfigError(
      "AUTH_TOKENS/AUTH_TOKENS_FILE cannot be used with AMQP_IDENTITY=caller: every call then goes over the caller's own broker user, which those tokens do not name. Give each token holder a token in ROUTES_FILE with brokerUser and brokerPasswordFile instead",
    );
  }
  if (!config.routesRawEnabled && config.routesFile === undefined) {
    throw new ConfigError('ROUTES_RAW_ENABLED=false needs ROUTES_FILE: without named routes nothing could be called');
  }
  if (config.routesRawRoles !== undefined) {
    if (!config.routesRawEnabled) {
      throw new ConfigError('ROUTES_RAW_ROLES limits the raw routes, which are off: set ROUTES_RAW_ENABLED=true too');
    }
    if (config.routesFile === undefined && config.jwt === undefined) {
      throw new ConfigError(
        'ROUTES_RAW_ROLES needs callers with roles: a routes file (ROUTES_FILE) whose tokens grant them, or JWTs (JWT_*)',
      );
    }
  }
  return Object.freeze(config);
}

function callsSettings(read: EnvReader, rpcMaxTimeoutMs: number): CallsSettings {
  const maxHeld = read.integer('CALLS_MAX_HELD', 10_000, 1, 1_000_000);
  return {
    // x-expires and x-message-ttl are 32-bit on the broker: a deadline plus what is kept after must fit.
    asyncMaxTimeoutMs: read.integer('ASYNC_MAX_TIMEOUT_MS', 3_600_000, rpcMaxTimeoutMs, 86_400_000),
    resultTtlMs: read.integer('ASYNC_RESULT_TTL_MS', 600_000, 1_000, 86_400_000),
    // Retries come within minutes; each key held is three queues on the broker.
    keyTtlMs: read.integer('IDEMPOTENCY_TTL_MS', 600_000, 1_000, 86_400_000),
    maxHeld,
    maxHeldPerCaller: read.integer('CALLS_MAX_HELD_PER_CALLER', Math.max(1, Math.floor(maxHeld / 10)), 1, 1_000_000),
    maxWaiting: read.integer('CALLS_MAX_WAITING', 256, 1, 1_500),
  };
}

function corsOrigins(origins: readonly string[] | undefined): readonly string[] | undefined {
  for (const origin of origins ?? []) {
    // A browser's Origin header never ends in a slash nor has a path: such an entry would match nobody.
    if (origin !== '*' && !ORIGIN.test(origin)) {
      throw new ConfigError(
        `CORS_ALLOWED_ORIGINS must list origins such as https://app.example.com or http://localhost:3000 (no path, no trailing slash), or *; got ${JSON.stringify(origin)}`,
      );
    }
  }
  return origins;
}
