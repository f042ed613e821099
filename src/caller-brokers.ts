import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Config } from './config.js';
import { BASIC_CHALLENGE, type BrokerLogin } from './http/access/access-control.js';
import { HttpProblem } from './http/problems.js';
import type { CallerBrokers } from './http/rpc-route.js';
import type { Metrics } from './observability/metrics.js';
import type { RpcClient } from './rpc/rpc-client.js';
import { createRpcStack, type RpcStack } from './rpc-stack.js';

export interface CallerBrokerOptions {
  readonly config: Config;
  readonly logger: Logger;
  readonly metrics: Metrics;
  /** Distinct broker users with a connection at once; past it, idle ones are closed first. */
  readonly maxUsers: number;
  /** A user's connection closes after this long without a request (and none in flight). */
  readonly idleMs: number;
  /** Reply channels on each user's connection. */
  readonly channels: number;
}

/** A login the broker refused is answered from memory for this long, so bad passwords cannot hammer it. */
const REFUSED_MEMORY_MS = 5_000;
/** Refused logins remembered at most (callers choose them freely): the oldest are forgotten first. */
const REFUSED_MEMORY_MAX = 10_000;
/** How long a caller's first request may wait for its connection and reply channels. */
const CONNECT_WAIT_MS = 10_000;
const READY_POLL_MS = 5;

interface UserBroker {
  readonly username: string;
  readonly stack: RpcStack;
  /** Resolves once connected with every reply channel open; rejects with the problem to answer. */
  readonly ready: Promise<RpcClient>;
  lastUsedAt: number;
}

/**
 * AMQP_IDENTITY=caller: each caller's requests go over a connection made with its own broker
 * credentials, so the broker's permissions (per vhost, exchange and queue) apply to that caller.
 * Connections are pooled per login (user and password: a wrong password never shares a right one's
 * connection), bounded in number and closed when idle. The default exchange is probed like any other,
 * so a publish the broker refuses costs that caller a probe channel, never a shared one.
 */
export class CallerBrokerPools implements CallerBrokers {
  private readonly users = new Map<string, UserBroker>();
  private readonly refused = new Map<string, number>();
  private readonly sweeper: NodeJS.Timeout;
  private stopped = false;

  constructor(private readonly options: CallerBrokerOptions) {
    this.sweeper = setInterval(() => this.closeIdle(Date.now()), Math.max(1_000, options.idleMs / 4));
    this.sweeper.unref();
  }

  get connectionCount(): number {
    let open = 0;
    for (const user of this.users.values()) if (user.stack.connection.isConnected) open += 1;
    return open;
  }

  get inFlightCount(): number {
    let total = 0;
    for (const user of this.users.values()) total += user.stack.rpc.inFlightCount;
    return total;
  }

  clientFor(login: BrokerLogin): Promise<RpcClient> {
    if (this.stopped) return Promise.reject(new HttpProblem('shutting-down', 'The bridge is shutting down'));
    const key = loginKey(login);
    const now = Date.now();
    const refusedUntil = this.refused.get(key);
    if (refusedUntil !== undefined) {
      if (refusedUntil > now) return Promise.reject(loginRefused(login.username));
      this.refused.delete(key);
    }
    let user = this.users.get(key);
    if (user === undefined) {
      if (this.users.size >= this.options.maxUsers && !this.closeOldestIdle()) {
        return Promise.reject(
          new HttpProblem(
            'overloaded',
            `${this.users.size} broker users are connected, none idle (AMQP_CALLER_MAX_USERS); retry shortly`,
            { retryAfterSeconds: 1 },
          ),
        );
      }
      user = this.open(login, key);
      this.users.set(key, user);
    }
    user.lastUsedAt = now;
    return user.ready;
  }

  /** Answers what is in flight on every caller's connection (502), then closes them. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.sweeper);
    const users = [...this.users.values()];
    this.users.clear();
    await Promise.all(users.map((user) => close(user, 'the bridge is shutting down')));
  }

  private open(login: BrokerLogin, key: string): UserBroker {
    const { config, logger, metrics } = this.options;
    let settle: { resolve(rpc: RpcClient): void; reject(problem: HttpProblem): void } | undefined;
    const ready = new Promise<RpcClient>((resolve, reject) => {
      settle = { resolve, reject };
    });
    // A caller that gives up before the connection is ready leaves nobody to hear a refusal.
    ready.catch(() => undefined);
    const stack = createRpcStack({
      urls: config.amqpUrls.map(withoutLogin),
      credentials: login,
      connectionName: `${config.appId}@${hostname()} for ${login.username}`,
      channels: this.options.channels,
      config,
      // The user is named in its lines; the password is in no log line (URLs are redacted).
      logger: logger.child({ brokerUser: login.username }),
      metrics,
      checkDefaultExchange: true,
      onLoginRefused: () => {
        metrics.callerLogins.labels('refused').inc();
        this.rememberRefused(key, Date.now());
        this.forget(key, stack);
        settle?.reject(loginRefused(login.username));
      },
    });
    const user: UserBroker = { username: login.username, stack, ready, lastUsedAt: Date.now() };
    stack.connection.addListener({
      connected: () => metrics.callerLogins.labels('accepted').inc(),
      disconnected() {},
      blockedChanged() {},
    });
    stack.connection.start();
    const giveUpAt = Date.now() + CONNECT_WAIT_MS;
    const poll = setInterval(() => {
      if (stack.connection.isConnected && stack.pool.allOpen) {
        clearInterval(poll);
        settle?.resolve(stack.rpc);
      } else if (this.users.get(key) !== user || Date.now() > giveUpAt) {
        clearInterval(poll);
        settle?.reject(
          new HttpProblem('broker-unavailable', `No broker connection for ${login.username} could be opened in time`, {
            retryAfterSeconds: 1,
          }),
        );
        if (this.users.get(key) === user) this.forget(key, stack);
      }
    }, READY_POLL_MS);
    return user;
  }

  private forget(key: string, stack: RpcStack): void {
    const user = this.users.get(key);
    if (user?.stack === stack) {
      this.users.delete(key);
      void close(user, 'the broker refused the login');
    }
  }

  private rememberRefused(key: string, now: number): void {
    if (this.refused.size >= REFUSED_MEMORY_MAX) {
      const oldest = this.refused.keys().next();
      if (oldest.done !== true) this.refused.delete(oldest.value);
    }
    this.refused.delete(key); // re-inserted last: insertion order is expiry order
    this.refused.set(key, now + REFUSED_MEMORY_MS);
  }

  private closeIdle(now: number): void {
    // Insertion order is expiry order: stop at the first refusal still remembered.
    for (const [key, until] of this.refused) {
      if (until > now) break;
      this.refused.delete(key);
    }
    for (const [key, user] of this.users) {
      if (user.stack.rpc.inFlightCount === 0 && now - user.lastUsedAt >= this.options.idleMs) {
        this.users.delete(key);
        void close(user, 'idle');
      }
    }
  }

  /** Makes room for a new user: the least recently used one with nothing in flight. */
  private closeOldestIdle(): boolean {
    let oldest: [string, UserBroker] | undefined;
    for (const entry of this.users) {
      if (entry[1].stack.rpc.inFlightCount > 0) continue;
      if (oldest === undefined || entry[1].lastUsedAt < oldest[1].lastUsedAt) oldest = entry;
    }
    if (oldest === undefined) return false;
    this.users.delete(oldest[0]);
    void close(oldest[1], 'making room for another broker user');
    return true;
  }
}

async function close(user: UserBroker, reason: string): Promise<void> {
  user.stack.rpc.settleAll({ kind: 'lost', reason });
  await user.stack.pool.stop();
  await user.stack.connection.stop();
}

/** The same user with another password is another login: it must never share a connection. */
function loginKey(login: BrokerLogin): string {
  return createHash('sha256').update(login.username).update('\0').update(login.password).digest('base64');
}

/** The broker URL without the bridge's own user: the caller's login is given apart (see `credentials`). */
function withoutLogin(url: string): string {
  const parsed = new URL(url);
  parsed.username = '';
  parsed.password = '';
  return parsed.toString();
}

function loginRefused(username: string): HttpProblem {
  return new HttpProblem('unauthorized', `The broker refused the login of "${username}"`, {
    challenge: BASIC_CHALLENGE,
  });
}
