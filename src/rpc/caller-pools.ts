// The pool stays hand-written: only an idle, connected entry may be evicted, and it may run over its limit while a login is under way; an LRU cache cannot refuse an eviction.
import { createHash } from 'node:crypto';
import { addressKey, LoginThrottle, type ThrottleVerdict } from './login-throttle.js';
import type { SessionLifecycle } from './ports.js';
import type { RpcClient } from './rpc-client.js';

/** A broker user's credentials, as a caller presented them or as a token maps to them. Secret. */
export interface BrokerLogin {
  readonly username: string;
  readonly password: string;
}

/** One login's broker session and the RPC core bound to it, not started yet. */
export interface CallerSession {
  readonly session: SessionLifecycle;
  readonly rpc: RpcClient;
}

/** Why a caller's connection cannot be had: the edge says it in HTTP terms. */
export type CallerRefusal =
  /** The broker refused this login (or did within the last few seconds). */
  | { readonly kind: 'login-refused'; readonly username: string }
  /** Too many refused logins for this user or from this address: not asked of the broker now. */
  | { readonly kind: 'login-throttled'; readonly username: string; readonly retryAfterMs: number }
  /** Enough logins for this user or address are under way to reach the throttle if all fail. */
  | { readonly kind: 'logins-busy'; readonly username: string }
  /** AMQP_CALLER_MAX_USERS connections, none idle. */
  | { readonly kind: 'no-room'; readonly connections: number }
  /** No connection could be opened in time. */
  | { readonly kind: 'unavailable'; readonly username: string }
  | { readonly kind: 'shutting-down' };

/** The reason a lease's `rpc` rejects with. */
export class CallerRefused extends Error {
  override name = 'CallerRefused';
  constructor(readonly refusal: CallerRefusal) {
    super(refusal.kind);
  }
}

/** A call's hold on its caller's connection, from asking for it until `release()`. */
export interface CallerLease {
  /** Rejects with CallerRefused when the connection cannot be had. */
  readonly rpc: Promise<RpcClient>;
  /** Idempotent. */
  release(): void;
}

export interface CallerPoolOptions {
  /** A session for this login (its own credentials), with its core: the composition root builds it. */
  readonly openSession: (login: BrokerLogin) => CallerSession;
  /** Each login's result at the broker, or from the throttles' memory. */
  readonly onLogin: (result: 'accepted' | 'refused' | 'throttled') => void;
  /** Logins with a connection at once; past it, a new login closes the least recently used idle one. */
  readonly maxUsers: number;
  /** A connection closes after this long with no call holding it. */
  readonly idleMs: number;
  /**
   * A connection takes no new calls after this long: the next one logs in again (so a password
   * changed at the broker stops working), and the old one closes once its calls are over.
   */
  readonly maxAgeMs: number;
  /** Reply channels on each connection. */
  readonly channels: number;
}

/** The same login refused by the broker is answered from memory for this long, whatever the throttles say. */
const REFUSED_MEMORY_MS = 5_000;
/** Refused logins remembered at most (callers choose them freely): the oldest are forgotten first. */
const REFUSED_MEMORY_MAX = 10_000;
/**
 * Per broker user, and per client address: refused logins (plus logins under way) within the window
 * before further new logins are answered 401 from memory, without asking the broker.
 */
const LOGIN_FAILURES_MAX = 5;
const LOGIN_FAILURES_WINDOW_MS = 60_000;
/** Users and addresses with refusals remembered, each (the stalest are forgotten first). */
const LOGIN_FAILURES_KEYS_MAX = 10_000;
const THROTTLE = { limit: LOGIN_FAILURES_MAX, windowMs: LOGIN_FAILURES_WINDOW_MS, maxKeys: LOGIN_FAILURES_KEYS_MAX };
/** How long a caller's first request may wait for its connection and reply channels. */
const CONNECT_WAIT_MS = 10_000;

/** One login's connection, from the moment a call asks for it until it is closed. */
interface CallerConnection {
  readonly key: string;
  readonly session: SessionLifecycle;
  readonly rpc: RpcClient;
  /** Resolves once connected with every reply channel open; rejects with CallerRefused. */
  readonly ready: Promise<RpcClient>;
  /** Ends a login still under way: `ready` rejects with this refusal (closing it is the caller's part). */
  readonly abandon: (refusal: CallerRefusal) => void;
  readonly openedAt: number;
  /** Still logging in: it cannot be closed to make room, and it counts against the login throttles. */
  connecting: boolean;
  /** Calls holding it: from asking for their connection until their HTTP request closes. */
  leases: number;
  lastUsedAt: number;
  /** Taken out of the pool (past its age): closes once its last lease is released. */
  retired: boolean;
}

/**
 * AMQP_IDENTITY=caller: each caller's requests go over a connection made with its own broker
 * credentials, so the broker's permissions (per vhost, exchange and queue) apply to that caller.
 * Connections are pooled per login (user and password: a wrong password never shares a right one's
 * connection), bounded in number and age, and closed when idle; a connection held by a call (from the
 * moment it asks, body still arriving included) or still logging in is never closed to make room.
 * New logins are throttled per broker user and per client address, so the bridge cannot be used to
 * guess passwords at the broker's speed. The default exchange is probed like any other, so a publish
 * the broker refuses costs that caller a probe channel, never a shared one.
 */
export class CallerPools {
  /** The connection new calls of each login get; retired ones are in `draining` until their calls end. */
  private readonly users = new Map<string, CallerConnection>();
  private readonly draining = new Set<CallerConnection>();
  private readonly refused = new Map<string, number>();
  private readonly userLogins = new LoginThrottle(THROTTLE);
  private readonly addressLogins = new LoginThrottle(THROTTLE);
  private readonly sweeper: NodeJS.Timeout;
  private stopped = false;

  constructor(private readonly options: CallerPoolOptions) {
    const every = Math.max(1_000, Math.min(options.idleMs, options.maxAgeMs) / 4);
    this.sweeper = setInterval(() => this.sweep(Date.now()), every);
    this.sweeper.unref();
  }

  get connectionCount(): number {
    let open = 0;
    for (const user of this.all()) if (user.session.isConnected) open += 1;
    return open;
  }

  get inFlightCount(): number {
    let total = 0;
    for (const user of this.all()) total += user.rpc.inFlightCount;
    return total;
  }

  /** Resolves once no call is in flight on any caller's connection. */
  async whenIdle(): Promise<void> {
    while (this.inFlightCount > 0) await Promise.all([...this.all()].map((user) => user.rpc.whenIdle()));
  }

  clientFor(login: BrokerLogin, clientAddress: string | undefined): CallerLease {
    if (this.stopped) return refusedLease({ kind: 'shutting-down' });
    const key = loginKey(login);
    const now = Date.now();
    let user = this.users.get(key);
    if (user !== undefined && !user.connecting && now - user.openedAt >= this.options.maxAgeMs) {
      this.retire(user);
      user = undefined;
    }
    if (user === undefined) {
      const address = addressKey(clientAddress);
      const refusal = this.admitLogin(login, key, address, now);
      if (refusal !== undefined) return refusedLease(refusal);
      user = this.open(login, key, address, now);
    }
    return this.lease(user, now);
  }

  /** Answers what is in flight on every caller's connection (502), then closes them. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.sweeper);
    const users = [...this.all()];
    for (const user of users) user.abandon({ kind: 'shutting-down' });
    this.users.clear();
    this.draining.clear();
    await Promise.all(users.map((user) => close(user, 'the bridge is shutting down')));
  }

  private *all(): Iterable<CallerConnection> {
    yield* this.users.values();
    yield* this.draining;
  }

  /** Why a login without a connection may not be tried at the broker now, or undefined when it may. */
  private admitLogin(login: BrokerLogin, key: string, address: string, now: number): CallerRefusal | undefined {
    const { onLogin } = this.options;
    const { username } = login;
    const refusedUntil = this.refused.get(key);
    if (refusedUntil !== undefined && refusedUntil > now) {
      onLogin('throttled');
      return { kind: 'login-refused', username };
    }
    const verdict = worst(this.userLogins.check(username, now), this.addressLogins.check(address, now));
    if (verdict.verdict === 'throttled') {
      onLogin('throttled');
      return { kind: 'login-throttled', username, retryAfterMs: verdict.retryAfterMs };
    }
    if (verdict.verdict === 'busy') return { kind: 'logins-busy', username };
    let connecting = 0;
    for (const user of this.users.values()) if (user.connecting) connecting += 1;
    // Over the limit, a new login is tried while an idle connection stays open; that one closes only
    // once the broker accepts the newcomer (see shrink), so refused logins never close anybody's.
    const full = this.users.size >= this.options.maxUsers;
    if (full && (this.leastRecentlyUsedIdle() === undefined || connecting >= this.options.maxUsers)) {
      return { kind: 'no-room', connections: this.users.size };
    }
    return undefined;
  }

  private lease(user: CallerConnection, now: number): CallerLease {
    user.leases += 1;
    user.lastUsedAt = now;
    let released = false;
    return {
      rpc: user.ready,
      release: () => {
        if (released) return;
        released = true;
        user.leases -= 1;
        user.lastUsedAt = Date.now();
        if (user.leases > 0) return;
        if (user.retired) this.closeRetired(user, 'past AMQP_CALLER_MAX_AGE_MS, its last call over');
        else this.shrink();
      },
    };
  }

  private open(login: BrokerLogin, key: string, clientAddress: string, now: number): CallerConnection {
    const { onLogin } = this.options;
    let settle: { resolve(rpc: RpcClient): void; reject(refused: CallerRefused): void } | undefined;
    const ready = new Promise<RpcClient>((resolve, reject) => {
      settle = { resolve, reject };
    });
    // A caller that gives up before the connection is ready leaves nobody to hear a refusal.
    ready.catch(() => undefined);
    this.userLogins.started(login.username);
    this.addressLogins.started(clientAddress);
    const loggedIn = (): void => {
      if (!user.connecting) return;
      user.connecting = false;
      clearTimeout(giveUp);
      this.userLogins.settled(login.username);
      this.addressLogins.settled(clientAddress);
    };
    const { session, rpc } = this.options.openSession(login);
    const user: CallerConnection = {
      key,
      session,
      rpc,
      ready,
      abandon: (refusal) => {
        if (!user.connecting) return;
        loggedIn();
        settle?.reject(new CallerRefused(refusal));
      },
      openedAt: now,
      connecting: true,
      leases: 0,
      lastUsedAt: now,
      retired: false,
    };
    session.addListener({
      connected: () => onLogin('accepted'),
      ready: () => {
        if (!user.connecting) return;
        loggedIn();
        settle?.resolve(rpc);
        this.shrink();
      },
      loginRefused: () => {
        onLogin('refused');
        const at = Date.now();
        this.rememberRefused(key, at);
        this.userLogins.refused(login.username, at);
        // Refused on a reconnect (a password changed since): no guess from the address that opened it.
        if (user.connecting) this.addressLogins.refused(clientAddress, at);
        user.abandon({ kind: 'login-refused', username: login.username });
        this.forget(user, 'the broker refused the login');
      },
    });
    const giveUp = setTimeout(() => {
      user.abandon({ kind: 'unavailable', username: login.username });
      this.forget(user, 'no connection in time');
    }, CONNECT_WAIT_MS);
    giveUp.unref();
    this.users.set(key, user);
    session.start();
    return user;
  }

  /** Takes a connection out of the pool for good; its calls (if any) finish on it first. */
  private retire(user: CallerConnection): void {
    if (this.users.get(user.key) === user) this.users.delete(user.key);
    user.retired = true;
    if (user.leases === 0) {
      void close(user, 'past AMQP_CALLER_MAX_AGE_MS');
      return;
    }
    this.draining.add(user);
  }

  private closeRetired(user: CallerConnection, reason: string): void {
    this.draining.delete(user);
    void close(user, reason);
  }

  /** Closes a connection at once (refused, never ready): whoever holds it hears why from `ready`. */
  private forget(user: CallerConnection, reason: string): void {
    if (this.users.get(user.key) === user) this.users.delete(user.key);
    this.draining.delete(user);
    void close(user, reason);
  }

  private rememberRefused(key: string, now: number): void {
    if (this.refused.size >= REFUSED_MEMORY_MAX) {
      const oldest = this.refused.keys().next();
      if (oldest.done !== true) this.refused.delete(oldest.value);
    }
    this.refused.delete(key); // re-inserted last: insertion order is expiry order
    this.refused.set(key, now + REFUSED_MEMORY_MS);
  }

  /** Back to AMQP_CALLER_MAX_USERS by closing idle connections, least recently used first. */
  private shrink(): void {
    while (this.users.size > this.options.maxUsers) {
      const idle = this.leastRecentlyUsedIdle();
      if (idle === undefined) return;
      this.users.delete(idle.key);
      void close(idle, 'making room for another broker login');
    }
  }

  /** Only a connection that is up and held by no call may be closed to make room. */
  private leastRecentlyUsedIdle(): CallerConnection | undefined {
    let oldest: CallerConnection | undefined;
    for (const user of this.users.values()) {
      if (user.connecting || user.leases > 0) continue;
      if (oldest === undefined || user.lastUsedAt < oldest.lastUsedAt) oldest = user;
    }
    return oldest;
  }

  private sweep(now: number): void {
    // Insertion order is expiry order: stop at the first refusal still remembered.
    for (const [key, until] of this.refused) {
      if (until > now) break;
      this.refused.delete(key);
    }
    this.userLogins.sweep(now);
    this.addressLogins.sweep(now);
    for (const user of this.users.values()) {
      if (user.connecting || user.leases > 0) continue;
      const idle = now - user.lastUsedAt >= this.options.idleMs;
      if (idle || now - user.openedAt >= this.options.maxAgeMs) {
        this.users.delete(user.key);
        void close(user, idle ? 'idle' : 'past AMQP_CALLER_MAX_AGE_MS');
      }
    }
  }
}

/** Throttled wins over busy, busy over allowed. */
function worst(a: ThrottleVerdict, b: ThrottleVerdict): ThrottleVerdict {
  if (a.verdict === 'throttled') return b.verdict === 'throttled' && b.retryAfterMs > a.retryAfterMs ? b : a;
  if (b.verdict === 'throttled' || b.verdict === 'busy') return b;
  return a;
}

function refusedLease(refusal: CallerRefusal): CallerLease {
  const rpc = Promise.reject(new CallerRefused(refusal));
  rpc.catch(() => undefined);
  return { rpc, release() {} };
}

async function close(user: CallerConnection, reason: string): Promise<void> {
  user.rpc.settleAll({ kind: 'lost', reason });
  await user.session.stop();
}

/** The same user with another password is another login: it must never share a connection. */
function loginKey(login: BrokerLogin): string {
  return createHash('sha256').update(login.username).update('\0').update(login.password).digest('base64');
}
