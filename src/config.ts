/**
 * Environment -> validated, frozen, typed configuration. This is the only module that reads
 * environment variables; everything else receives a Config.
 */

import { readFileSync } from 'node:fs';

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
  readonly amqpChannels: number;
  readonly replyTo: ReplyToQueue;
  /** `direct`: direct reply-to (no queue). `queue`: one exclusive, server-named callback queue per channel. */
  readonly replyMode: 'direct' | 'queue';
  /** Publisher confirms on the request channels: a broker nack answers 503 at once. */
  readonly publisherConfirms: boolean;
  /** RPCs in flight beyond which new ones are refused with 503. */
  readonly maxInFlight: number;
  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
  readonly rpcTimeoutMs: number;
  readonly rpcMaxTimeoutMs: number;
  readonly maxBodyBytes: number;
  readonly exchangeCheckTtlMs: number;
  readonly metricsMaxQueues: number;
  readonly shutdownGraceMs: number;
  readonly logLevel: LogLevel;
  readonly appId: string;
  /** Bearer tokens that may call the bridge; empty means no authentication. Secret: never logged. */
  readonly authTokens: readonly string[];
  /** Whether /metrics also needs a token (health endpoints never do: probes must reach them). */
  readonly authProtectMetrics: boolean;
  /** Glob patterns of queues callers may address; undefined means any (except reserved `amq.` names). */
  readonly allowedQueues: readonly string[] | undefined;
  /** Glob patterns of exchanges callers may address; undefined means any. */
  readonly allowedExchanges: readonly string[] | undefined;
}

/** Thrown at start-up; the message always names the offending variable. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Env = Readonly<Record<string, string | undefined>>;

/** RabbitMQ refuses messages above 128 MiB by default (max_message_size); stay below it. */
const MAX_BODY_CEILING = 128 * 1024 * 1024;

export function loadConfig(env: Env): Config {
  const read = new EnvReader(env);
  const rpcMaxTimeoutMs = read.integer('RPC_MAX_TIMEOUT_MS', 300_000, 1, 2_147_483_647);
  const rpcTimeoutMs = read.integer('RPC_TIMEOUT_MS', 30_000, 1, rpcMaxTimeoutMs);
  const reconnectMinMs = read.integer('AMQP_RECONNECT_MIN_MS', 100, 1, 600_000);
  const config: Config = {
    host: read.string('HOST', '0.0.0.0'),
    port: read.integer('PORT', 8080, 0, 65_535),
    httpBacklog: read.integer('HTTP_BACKLOG', 4096, 1, 65_535),
    httpHeadersTimeoutMs: read.integer('HTTP_HEADERS_TIMEOUT_MS', 10_000, 100, 600_000),
    httpRequestTimeoutMs: read.integer('HTTP_REQUEST_TIMEOUT_MS', 30_000, 100, 3_600_000),
    amqpUrls: read.amqpUrls('AMQP_URLS', 'AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672'),
    amqpChannels: read.integer('AMQP_CHANNELS', 4, 1, 256),
    replyTo: read.oneOf('AMQP_REPLY_TO', REPLY_TO_QUEUES, 'amq.rabbitmq.reply-to'),
    replyMode: read.oneOf('RPC_REPLY_MODE', ['direct', 'queue'] as const, 'direct'),
    publisherConfirms: read.boolean('AMQP_PUBLISHER_CONFIRMS', true),
    maxInFlight: read.integer('MAX_IN_FLIGHT', 10_000, 1, 10_000_000),
    reconnectMinMs,
    reconnectMaxMs: read.integer('AMQP_RECONNECT_MAX_MS', 30_000, reconnectMinMs, 3_600_000),
    rpcTimeoutMs,
    rpcMaxTimeoutMs,
    maxBodyBytes: read.integer('MAX_BODY_BYTES', 1024 * 1024, 0, MAX_BODY_CEILING),
    exchangeCheckTtlMs: read.integer('EXCHANGE_CHECK_TTL_MS', 5_000, 0, 3_600_000),
    metricsMaxQueues: read.integer('METRICS_MAX_QUEUES', 100, 1, 100_000),
    shutdownGraceMs: read.integer('SHUTDOWN_GRACE_MS', 10_000, 0, 3_600_000),
    logLevel: read.oneOf('LOG_LEVEL', LOG_LEVELS, 'info'),
    appId: read.string('APP_ID', 'amqp-rpc-bridge'),
    authTokens: read.tokens('AUTH_TOKENS', 'AUTH_TOKENS_FILE'),
    authProtectMetrics: read.boolean('AUTH_PROTECT_METRICS', false),
    allowedQueues: read.list('ALLOWED_QUEUES'),
    allowedExchanges: read.list('ALLOWED_EXCHANGES'),
  };
  return Object.freeze(config);
}

/** The configuration as it may appear in a log line: credentials replaced. */
export function loggableConfig(config: Config): Record<string, unknown> {
  return {
    ...config,
    amqpUrls: config.amqpUrls.map(redactUrl),
    authTokens: `${config.authTokens.length} configured`,
  };
}

export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '<unparseable url>';
  }
}

class EnvReader {
  constructor(private readonly env: Env) {}

  private raw(name: string): string | undefined {
    const value = this.env[name]?.trim();
    return value === undefined || value === '' ? undefined : value;
  }

  string(name: string, fallback: string): string {
    return this.raw(name) ?? fallback;
  }

  integer(name: string, fallback: number, min: number, max: number): number {
    const value = this.raw(name);
    if (value === undefined) return fallback;
    if (!/^\d+$/.test(value)) {
      throw new ConfigError(`${name} must be a whole number, got ${JSON.stringify(value)}`);
    }
    const parsed = Number(value);
    if (parsed < min || parsed > max) {
      throw new ConfigError(`${name} must be between ${min} and ${max}, got ${value}`);
    }
    return parsed;
  }

  /** Comma-separated values; undefined when the variable is unset or empty. */
  list(name: string): readonly string[] | undefined {
    const value = this.raw(name);
    if (value === undefined) return undefined;
    const items = value
      .split(',')
      .map((item) => item.trim())
      .filter((item) => item !== '');
    if (items.length === 0) throw new ConfigError(`${name} lists nothing`);
    return Object.freeze(items);
  }

  /** Secrets from a comma-separated variable or a file with one per line (for mounted secrets). */
  tokens(name: string, fileName: string): readonly string[] {
    const inline = this.list(name) ?? [];
    const file = this.raw(fileName);
    let fromFile: string[] = [];
    if (file !== undefined) {
      try {
        fromFile = readFileSync(file, 'utf8')
          .split(/\r?\n/)
          .map((line) => line.trim())
          .filter((line) => line !== '' && !line.startsWith('#'));
      } catch (err) {
        throw new ConfigError(`${fileName} cannot be read: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
      }
      if (fromFile.length === 0) throw new ConfigError(`${fileName} holds no token`);
    }
    const tokens = [...inline, ...fromFile];
    // Never echo a token: say only which variable is wrong.
    if (tokens.some((token) => token.length < 16)) {
      throw new ConfigError(`${name}/${fileName}: every token must be at least 16 characters`);
    }
    return Object.freeze(tokens);
  }

  boolean(name: string, fallback: boolean): boolean {
    const value = this.raw(name)?.toLowerCase();
    if (value === undefined) return fallback;
    if (value === 'true' || value === '1') return true;
    if (value === 'false' || value === '0') return false;
    throw new ConfigError(`${name} must be true or false, got ${JSON.stringify(value)}`);
  }

  oneOf<const T extends string>(name: string, allowed: readonly T[], fallback: T): T {
    const value = this.raw(name);
    if (value === undefined) return fallback;
    const match = allowed.find((candidate) => candidate === value);
    if (match === undefined) {
      throw new ConfigError(`${name} must be one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
    }
    return match;
  }

  /** AMQP_URLS, else AMQP_URL, each a comma-separated list of amqp:// or amqps:// URLs. */
  amqpUrls(listName: string, name: string, fallback: string): readonly string[] {
    const used = this.raw(listName) !== undefined ? listName : name;
    const urls = (this.raw(used) ?? fallback)
      .split(',')
      .map((url) => url.trim())
      .filter((url) => url !== '');
    if (urls.length === 0) throw new ConfigError(`${used} lists no URL`);
    urls.forEach((url, index) => {
      const which = urls.length > 1 ? `${used} (URL ${index + 1})` : used;
      let parsed: URL;
      try {
        parsed = new URL(url);
      } catch {
        // Never echo the value: it may hold a password.
        throw new ConfigError(`${which} is not a valid URL`);
      }
      if (parsed.protocol !== 'amqp:' && parsed.protocol !== 'amqps:') {
        throw new ConfigError(`${which} must start with amqp:// or amqps://, got ${parsed.protocol}//`);
      }
    });
    return Object.freeze(urls);
  }
}
