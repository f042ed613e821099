import { randomInt } from 'node:crypto';
import amqp, { type ChannelModel } from 'amqplib';
import type { Logger } from 'pino';
import { MIN_FRAME_MAX_BYTES } from '../config/env-reader.js';
import { redactUrl } from '../config/redact.js';
import { toError } from '../errors.js';
import type { BrokerState } from '../rpc/ports.js';
import { reconnectDelay } from './backoff.js';
import { guardPropertyDecoding } from './undecodable-properties.js';

// Before any connection reads a frame: a reply no one can decode must not end the connection.
guardPropertyDecoding();

export interface BrokerConnectionOptions {
  /** Tried in turn: after a failed attempt or a lost connection, the next one. */
  readonly urls: readonly string[];
  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
  /** Shown in the broker's management UI as the connection name. */
  readonly connectionName: string;
  /** `random`: replicas given the same list spread over it; `listed`: the first URL first. */
  readonly connectOrder: 'random' | 'listed';
  /** Asked of the broker unless a URL says `?heartbeat=` itself; 0 turns heartbeats off. */
  readonly heartbeatSeconds: number;
  readonly logger: Logger;
  /**
   * Given: a login the broker refuses ends the connection's life instead of being retried (a
   * caller's own credentials, which only the caller can fix). Not given: retried like any failure.
   */
  readonly onLoginRefused?: ((reason: string) => void) | undefined;
  /**
   * The login, given apart from the URLs (whose own user and password it replaces): amqplib decodes
   * a URL's userinfo with `unescape`, which turns UTF-8 (`jürgen`) into Latin-1 (`jÃ¼rgen`); these
   * go to the broker as they are, in SASL PLAIN's UTF-8. Secret: never logged.
   */
  readonly credentials?: { readonly username: string; readonly password: string } | undefined;
}

/** Who wants to know when the connection comes and goes (its session). */
export interface ConnectionListener {
  connected(model: ChannelModel): void;
  disconnected(reason: string): void;
  blockedChanged(blocked: boolean): void;
}

/**
 * How RabbitMQ and LavinMQ refuse a login (403 ACCESS_REFUSED: unknown user, wrong password) or the
 * vhost (530 NOT_ALLOWED): connection.close during the handshake, as amqplib words it.
 */
const LOGIN_REFUSED = /^Handshake terminated by server: (403|530)\b/;

/** Opening the TCP + AMQP handshake must not hang forever on a black-holed address. */
const CONNECT_TIMEOUT_MS = 10_000;

/**
 * One AMQP connection, kept up for the life of the process: reconnects with capped, jittered
 * backoff after any loss, and tells its listeners. It never buffers work while down; callers ask
 * `isConnected` and answer 503 themselves.
 */
export class BrokerConnection implements BrokerState {
  private model: ChannelModel | undefined;
  private stopped = false;
  private started = false;
  private attempt = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private nextAttemptAt = 0;
  private blocked = false;
  /**
   * Where in the list this instance starts: by default at random, so that replicas given the same
   * list of cluster nodes spread over them instead of all landing on the first.
   */
  private urlIndex: number;
  private readonly listeners: ConnectionListener[] = [];

  constructor(private readonly options: BrokerConnectionOptions) {
    this.urlIndex = options.connectOrder === 'random' ? randomInt(options.urls.length) : 0;
  }

  addListener(listener: ConnectionListener): void {
    this.listeners.push(listener);
  }

  get current(): ChannelModel | undefined {
    return this.model;
  }

  get isConnected(): boolean {
    return this.model !== undefined;
  }

  get isBlocked(): boolean {
    return this.blocked;
  }

  /** Milliseconds until the next connection attempt, for Retry-After; 0 when one is under way. */
  retryAfterMs(now = Date.now()): number {
    return Math.max(0, this.nextAttemptAt - now);
  }

  /** Starts connecting in the background; listeners hear when it succeeds. */
  start(): void {
    if (this.started) return;
    this.started = true;
    void this.connect();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    const model = this.model;
    this.model = undefined;
    if (model) await model.close().catch(() => undefined);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const { logger, credentials } = this.options;
    let model: ChannelModel;
    try {
      model = await amqp.connect(withHeartbeat(this.url, this.options.heartbeatSeconds), {
        // Without noDelay a small publish can sit behind Nagle's algorithm for a delayed ACK (~40 ms).
        noDelay: true,
        timeout: CONNECT_TIMEOUT_MS,
        clientProperties: { connection_name: this.options.connectionName },
        ...(credentials === undefined
          ? {}
          : { credentials: amqp.credentials.plain(credentials.username, credentials.password) }),
      });
    } catch (err) {
      const reason = toError(err).message;
      if (this.options.onLoginRefused !== undefined && LOGIN_REFUSED.test(reason)) {
        this.stopped = true;
        this.options.onLoginRefused(reason);
        return;
      }
      this.scheduleReconnect(`connect to ${redactUrl(this.url)} failed: ${reason}`);
      return;
    }
    if (this.stopped) {
      await model.close().catch(() => undefined);
      return;
    }
    // amqplib throws from emit('error') when nobody listens; the 'close' event that follows does the work.
    model.on('error', (err: Error) => logger.warn({ err: err.message }, 'amqp connection error'));
    model.on('close', (err?: Error) => this.onClose(model, err));
    model.on('blocked', (reason: string) => this.setBlocked(true, reason));
    model.on('unblocked', () => this.setBlocked(false));
    this.model = model;
    this.attempt = 0;
    this.nextAttemptAt = 0;
    logger.info({ broker: redactUrl(this.url), server: model.connection.serverProperties.product }, 'amqp connected');
    const { frameMax } = model.connection as unknown as { frameMax: number };
    if (frameMax !== 0 && frameMax < MIN_FRAME_MAX_BYTES) {
      logger.error(
        { broker: redactUrl(this.url), frameMax },
        `the broker allows frames of ${frameMax} bytes, below the ${MIN_FRAME_MAX_BYTES} a request's message properties may take: ` +
          'a request with many Amqp-Header-* would end the connection (raise frame_max on the broker)',
      );
    }
    for (const listener of this.listeners) listener.connected(model);
  }

  private onClose(model: ChannelModel, err: Error | undefined): void {
    if (this.model !== model) return;
    this.model = undefined;
    if (this.blocked) this.setBlocked(false);
    const reason = err ? err.message : 'closed by client';
    for (const listener of this.listeners) listener.disconnected(reason);
    if (!this.stopped) this.scheduleReconnect(`connection lost: ${reason}`);
  }

  private setBlocked(blocked: boolean, reason?: string): void {
    if (this.blocked === blocked) return;
    this.blocked = blocked;
    this.options.logger.warn({ reason }, blocked ? 'amqp connection blocked by broker' : 'amqp connection unblocked');
    for (const listener of this.listeners) listener.blockedChanged(blocked);
  }

  private get url(): string {
    return this.options.urls[this.urlIndex] as string;
  }

  /**
   * `listed`: the next URL in turn (a primary's standby). `random`: any other URL at random, so that
   * replicas that lost the same node do not all move to the same next one and stay together.
   */
  private nextUrlIndex(): number {
    const count = this.options.urls.length;
    if (count === 1) return 0;
    if (this.options.connectOrder === 'listed') return (this.urlIndex + 1) % count;
    return (this.urlIndex + 1 + randomInt(count - 1)) % count;
  }

  private scheduleReconnect(reason: string): void {
    if (this.stopped) return;
    this.urlIndex = this.nextUrlIndex();
    this.attempt += 1;
    const delay = reconnectDelay(this.attempt, this.options.reconnectMinMs, this.options.reconnectMaxMs);
    this.nextAttemptAt = Date.now() + delay;
    this.options.logger.warn({ reason, attempt: this.attempt, delayMs: delay }, 'amqp reconnect scheduled');
    this.retryTimer = setTimeout(() => void this.connect(), delay);
  }
}

/**
 * The URL with `heartbeat` set unless it names one. Without it amqplib takes the broker's proposal
 * (60 s on RabbitMQ), and a broker that goes silent is noticed only after two to three minutes.
 */
function withHeartbeat(url: string, seconds: number): string {
  const parsed = new URL(url);
  if (parsed.searchParams.has('heartbeat')) return url;
  parsed.searchParams.set('heartbeat', String(seconds));
  return parsed.toString();
}
