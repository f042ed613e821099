import { toError } from '../errors.js';
import { type CallId, callQueueName, keyQueueName, newCallId, parseCallId, recordQueueName } from './call-ids.js';
import { CallerQuota } from './caller-quota.js';
import type { Reply, RpcOutcome } from './outcome.js';
import { BrokerNotConnected, type KeyClaim, type ResultStore, type StoredResult } from './ports.js';

/** The header of the bridge's own record of a publish's outcome, in the key's call queue. */
const OUTCOME_HEADER = 'x-bridge-outcome';
/** How long a retry waits for the first request's record, written just after its claim. */
const RECORD_WAIT_MS = 2_000;
const SWEEP_EVERY_MS = 10_000;

export interface DeferredCallsOptions {
  readonly store: ResultStore;
  /** How long an asynchronous call's result is kept after the call's deadline (ASYNC_RESULT_TTL_MS). */
  readonly resultTtlMs: number;
  /** How long an idempotency key holds its first call's answer (IDEMPOTENCY_TTL_MS). */
  readonly keyTtlMs: number;
  /** Calls and keys this replica keeps on the broker, at most, and per caller (CALLS_MAX_HELD*). */
  readonly maxHeld: number;
  readonly maxHeldPerCaller: number;
  /**
   * Deferred requests under way at once (CALLS_MAX_WAITING), each of which may hold a channel of its own
   * (a wait for a reply, a long-poll, a lookup, a claim); one caller may take half.
   */
  readonly maxWaiting: number;
  /** The broker refused a queue operation (missing permissions on `rpc-bridge.*`, a policy): for the log. */
  readonly onStoreError?: ((err: unknown) => void) | undefined;
}

/** What the RPC core made of a deferred request, and whether the broker was handed it. */
export interface Sent {
  readonly outcome: RpcOutcome;
  readonly published: boolean;
}

/** One request that asked to outlive its HTTP exchange, or to be sent once per key. */
export interface DeferredRequest {
  /** Whom the call and the key belong to: nobody else can read, join or delete them. */
  readonly owner: string;
  readonly operation: 'rpc' | 'publish';
  /** Epoch ms: the request's own deadline (its timeout from arrival). */
  readonly deadline: number;
  /** `Prefer: respond-async`: the reply if it comes within `waitMs`, else a call id to ask about later. */
  readonly async: { readonly waitMs: number } | undefined;
  /** `Idempotency-Key`, with the request's fingerprint (the same key with another request is refused). */
  readonly key: { readonly value: string; readonly fingerprint: string } | undefined;
  /** Hands the request to the RPC core, with the reply address a worker answers to (an RPC's). */
  send(replyTo: string | undefined): Promise<Sent>;
  /** Aborted when the HTTP caller goes away: stop waiting (the call itself goes on). */
  readonly signal: AbortSignal;
}

export type DeferredResult =
  /** Answer as a synchronous call's outcome; `replayed`: it is the first request's with the same key. */
  | { readonly kind: 'outcome'; readonly outcome: RpcOutcome; readonly replayed: boolean }
  /** Not answered yet: 202, and ask about `call` later. */
  | { readonly kind: 'pending'; readonly call: CallId; readonly replayed: boolean }
  | Refused;

export type DeferredRefusal =
  /** The key was used for another request (422). */
  | { readonly kind: 'key-reused' }
  /** The key's first request left no call to join (it failed, was given up, or its record is gone): 409. */
  | { readonly kind: 'key-unsettled' }
  | { readonly kind: 'held-limit'; readonly limit: number }
  | { readonly kind: 'caller-held-limit'; readonly limit: number }
  | { readonly kind: 'waiting-limit'; readonly limit: number }
  | { readonly kind: 'caller-waiting-limit'; readonly limit: number };

type Refused = { readonly kind: 'refused'; readonly refusal: DeferredRefusal };

/** What a caller learns of a call id. */
export type CallLookup =
  | { readonly kind: 'reply'; readonly reply: Reply }
  | { readonly kind: 'pending'; readonly call: CallId }
  /** Its deadline passed with no reply. */
  | { readonly kind: 'timeout'; readonly call: CallId }
  /** Unknown, expired, given up, or somebody else's. */
  | { readonly kind: 'unknown' }
  | Refused
  /** The broker could not be asked (safe to ask again). */
  | { readonly kind: 'failed'; readonly reason: string };

export type CallCancel = { readonly kind: 'removed' } | { readonly kind: 'unknown' } | Refused;

/** A result queue read: what it held, or why it could not be read. */
type ReadResult = StoredResult | { readonly kind: 'failed'; readonly reason: string };

/** The state a replica holds for a caller: a call or key it made that the broker may still keep. */
interface Held {
  readonly owner: string;
  readonly until: number;
  /** A key's other queues, deleted with it. */
  readonly also: readonly string[];
}

/** Outcomes after which the broker has not kept the request, published or not: nothing to wait for. */
const REFUSED_BY_BROKER: ReadonlySet<RpcOutcome['kind']> = new Set([
  'unroutable',
  'exchange-not-found',
  'exchange-name-refused',
  'exchange-forbidden',
  'nacked',
]);

/**
 * Calls that outlive their HTTP request (`Prefer: respond-async`) and requests sent at most once per
 * idempotency key. The broker is the only store: a call's reply waits in a queue of its own, named
 * from the caller and the call id, which any replica can read; a key is a one-message queue whose first
 * confirmed message claims it, beside a record of the call it made. This replica counts what it made
 * and what is under way, so what callers can make the broker keep, and the channels used, stay bounded.
 */
export class DeferredCalls {
  private readonly held = new Map<string, Held>();
  private readonly heldPerOwner: CallerQuota;
  private waitingNow = 0;
  /** One caller may have half of CALLS_MAX_WAITING under way. */
  private readonly waitingPerOwner: CallerQuota;
  private idleWaiters: Array<() => void> = [];
  private sweptAt = Date.now();

  constructor(private readonly options: DeferredCallsOptions) {
    this.heldPerOwner = new CallerQuota(options.maxHeldPerCaller);
    this.waitingPerOwner = new CallerQuota(Math.max(1, Math.floor(options.maxWaiting / 2)));
  }

  /** Calls and keys this replica made that the broker may still keep. */
  get heldCount(): number {
    return this.held.size;
  }

  /** Deferred requests under way now. */
  get waitingCount(): number {
    return this.waitingNow;
  }

  /** Resolves once no deferred request is under way (at once if none is): for draining on shutdown. */
  whenIdle(): Promise<void> {
    if (this.waitingNow === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Runs a deferred request. Never rejects for what the broker does: failures are outcomes. */
  start(request: DeferredRequest): Promise<DeferredResult> {
    return this.underWay(request.owner, () => this.run(request));
  }

  /** What the owner's call `id` has come to; waits up to `waitMs` for its reply (long-poll). */
  lookup(owner: string, id: string, waitMs: number, signal?: AbortSignal): Promise<CallLookup> {
    const call = parseCallId(id);
    // Past what is kept: answered from the id alone, without asking the broker.
    if (call === undefined || Date.now() >= call.keptUntil) return Promise.resolve({ kind: 'unknown' });
    return this.underWay(owner, async (): Promise<CallLookup> => {
      const stored = await this.read(callQueueName(owner, id), Math.min(waitMs, call.deadline - Date.now()), signal);
      if (stored.kind === 'failed' || stored.kind === 'unknown') return stored;
      if (stored.kind === 'reply') return { kind: 'reply', reply: stored.reply };
      return Date.now() >= call.deadline ? { kind: 'timeout', call } : { kind: 'pending', call };
    });
  }

  /** Gives the owner's call up: its queue goes, and a reply that comes later is dropped. */
  cancel(owner: string, id: string): Promise<CallCancel> {
    const call = parseCallId(id);
    if (call === undefined || Date.now() >= call.keptUntil) return Promise.resolve({ kind: 'unknown' });
    return this.underWay(owner, async (): Promise<CallCancel> => {
      const queue = callQueueName(owner, id);
      this.release(queue);
      return (await this.options.store.remove(queue)) ? { kind: 'removed' } : { kind: 'unknown' };
    });
  }

  private async run(request: DeferredRequest): Promise<DeferredResult> {
    const { key, owner } = request;
    if (key === undefined) {
      return this.first(request, newCallId(request.deadline, request.deadline + this.options.resultTtlMs), undefined);
    }
    const { keyTtlMs } = this.options;
    // A key's call is kept as long as the key: a retry after the result came must still find it.
    const call = newCallId(request.deadline, request.deadline + Math.max(this.options.resultTtlMs, keyTtlMs));
    const keyQueue = keyQueueName(owner, key.value, keyTtlMs);
    const recordQueue = recordQueueName(owner, key.value, keyTtlMs);
    const callQueue = callQueueName(owner, call.id);
    // One entry for the key's three queues: the first request's, released if another holds the key.
    const holding = this.hold(keyQueue, owner, call.keptUntil, [recordQueue, callQueue]);
    if (holding !== undefined && holding !== 'held-already') return { kind: 'refused', refusal: holding };
    // Released again unless this request makes the call ('held-already': a retry on the replica that holds it).
    const mine = holding === undefined;
    let claim: KeyClaim;
    try {
      claim = await this.options.store.claim(keyQueue, keyTtlMs);
    } catch (err) {
      if (mine) this.release(keyQueue);
      return this.notSent(err);
    }
    if (claim === 'taken') {
      if (mine) this.release(keyQueue);
      return this.join(request, recordQueue);
    }
    return this.first(request, call, { keyQueue, recordQueue, fingerprint: key.fingerprint });
  }

  /** This request is the first with its key (or has none): it makes the call. */
  private async first(
    request: DeferredRequest,
    call: CallId,
    key: { readonly keyQueue: string; readonly recordQueue: string; readonly fingerprint: string } | undefined,
  ): Promise<DeferredResult> {
    const { store } = this.options;
    const queue = callQueueName(request.owner, call.id);
    if (key === undefined) {
      const refusal = this.hold(queue, request.owner, call.keptUntil, []);
      if (refusal !== undefined && refusal !== 'held-already') return { kind: 'refused', refusal };
    }
    const heldAs = key?.keyQueue ?? queue;
    try {
      await store.create(queue, call.keptUntil - Date.now());
      if (key !== undefined) {
        // The record names the call, for retries: written before the request goes, so they find it.
        await store.create(key.recordQueue, this.options.keyTtlMs);
        await store.put(key.recordQueue, recordOf(call, key.fingerprint));
      }
    } catch (err) {
      await this.forget(heldAs);
      return this.notSent(err);
    }
    const { outcome, published } = await request.send(request.operation === 'rpc' ? queue : undefined);
    if (outcome.kind !== 'accepted') {
      // A key stays with a request the broker may have (lost, timed out after publishing): a retry waits
      // for its reply rather than sending it twice. Without a key, nobody could ever read that reply.
      if (!published || REFUSED_BY_BROKER.has(outcome.kind) || key === undefined) await this.forget(heldAs);
      return { kind: 'outcome', outcome, replayed: false };
    }
    if (request.operation === 'publish') {
      // What a retry with the key replays: the broker took it.
      await store.put(queue, acceptedRecord()).catch(() => undefined);
      return { kind: 'outcome', outcome, replayed: false };
    }
    // No reply is awaited past the deadline, however long the caller would wait.
    const untilDeadline = request.deadline - Date.now();
    const waitMs = request.async === undefined ? untilDeadline : Math.min(request.async.waitMs, untilDeadline);
    const stored = waitMs > 0 ? await this.read(queue, waitMs, request.signal) : ({ kind: 'empty' } as const);
    if (stored.kind === 'reply') {
      // Answered within the wait, so nobody is told its id: the queue has done its work (a key keeps it).
      if (key === undefined) await this.forget(queue);
      return { kind: 'outcome', outcome: { kind: 'reply', reply: stored.reply }, replayed: false };
    }
    // Published: whatever became of the wait, the reply will be in its queue; the id finds it.
    if (request.async !== undefined && (stored.kind !== 'empty' || Date.now() < call.deadline))
      return { kind: 'pending', call, replayed: false };
    if (stored.kind === 'failed' || stored.kind === 'unknown') {
      const reason = stored.kind === 'failed' ? stored.reason : 'its queue was deleted';
      return {
        kind: 'outcome',
        outcome: { kind: 'lost', reason: `published, but its reply could not be awaited: ${reason}` },
        replayed: false,
      };
    }
    return { kind: 'outcome', outcome: ending(request), replayed: false };
  }

  /** A retry with the key of a call made before: its answer, once it has one. */
  private async join(request: DeferredRequest, recordQueue: string): Promise<DeferredResult> {
    // The first request writes its record just after its claim: declared here too, so that a retry
    // arriving in between waits for it instead of finding no queue.
    try {
      await this.options.store.create(recordQueue, this.options.keyTtlMs);
    } catch (err) {
      return this.notSent(err);
    }
    const record = await this.read(
      recordQueue,
      Math.min(RECORD_WAIT_MS, request.deadline - Date.now()),
      request.signal,
    );
    if (record.kind === 'failed') return this.notSent(new Error(record.reason));
    const first = record.kind === 'reply' ? readRecord(record.reply.body) : undefined;
    if (first === undefined) return { kind: 'refused', refusal: { kind: 'key-unsettled' } };
    if (first.fingerprint !== request.key?.fingerprint) return { kind: 'refused', refusal: { kind: 'key-reused' } };
    const { call } = first;
    const now = Date.now();
    const waitMs =
      request.async === undefined ? request.deadline - now : Math.min(request.async.waitMs, call.deadline - now);
    const stored = await this.read(callQueueName(request.owner, call.id), waitMs, request.signal);
    if (stored.kind === 'failed') return this.notSent(new Error(stored.reason));
    // Given up (DELETE), or the first request failed and let the key go under this one.
    if (stored.kind === 'unknown') return { kind: 'refused', refusal: { kind: 'key-unsettled' } };
    if (stored.kind === 'reply') {
      const outcome: RpcOutcome =
        request.operation === 'publish' && stored.reply.headers[OUTCOME_HEADER] === 'accepted'
          ? { kind: 'accepted' }
          : { kind: 'reply', reply: stored.reply };
      return { kind: 'outcome', outcome, replayed: true };
    }
    if (request.async !== undefined && Date.now() < call.deadline) return { kind: 'pending', call, replayed: true };
    return { kind: 'outcome', outcome: ending(request), replayed: true };
  }

  /**
   * The broker could not keep or read the call: nothing was sent, so a retry is safe. The broker's own
   * words (which name queues and vhosts) go to the operator's log, not to the caller.
   */
  private notSent(err: unknown): DeferredResult {
    const disconnected = err instanceof BrokerNotConnected;
    if (!disconnected) this.options.onStoreError?.(err);
    const reason = disconnected
      ? 'not connected to the broker'
      : 'the broker refused to keep the call (see the bridge log)';
    return { kind: 'outcome', outcome: { kind: 'unavailable', reason, retryAfterMs: 1_000 }, replayed: false };
  }

  private async read(queue: string, waitMs: number, signal: AbortSignal | undefined): Promise<ReadResult> {
    try {
      return await this.options.store.read(queue, signal?.aborted === true ? 0 : Math.max(0, waitMs), signal);
    } catch (err) {
      return { kind: 'failed', reason: toError(err).message };
    }
  }

  /** Runs `work` as one deferred request under way, within CALLS_MAX_WAITING and the caller's half of it. */
  private async underWay<T>(owner: string, work: () => Promise<T>): Promise<T | Refused> {
    const { maxWaiting } = this.options;
    if (this.waitingNow >= maxWaiting)
      return { kind: 'refused', refusal: { kind: 'waiting-limit', limit: maxWaiting } };
    if (!this.waitingPerOwner.tryAcquire(owner))
      return { kind: 'refused', refusal: { kind: 'caller-waiting-limit', limit: this.waitingPerOwner.limit } };
    this.waitingNow += 1;
    try {
      return await work();
    } finally {
      this.waitingNow -= 1;
      this.waitingPerOwner.release(owner);
      if (this.waitingNow === 0) {
        const waiters = this.idleWaiters;
        this.idleWaiters = [];
        for (const resolve of waiters) resolve();
      }
    }
  }

  /**
   * Counts state the broker will keep until `until` for `owner`; the refusal when past a limit, or
   * `held-already` when this replica already holds the name (a retry of its own key).
   */
  private hold(
    queue: string,
    owner: string,
    until: number,
    also: readonly string[],
  ): DeferredRefusal | 'held-already' | undefined {
    if (this.held.has(queue)) return 'held-already';
    this.sweep();
    const { maxHeld } = this.options;
    if (this.held.size >= maxHeld) return { kind: 'held-limit', limit: maxHeld };
    if (!this.heldPerOwner.tryAcquire(owner)) return { kind: 'caller-held-limit', limit: this.heldPerOwner.limit };
    this.held.set(queue, { owner, until, also });
    return undefined;
  }

  private release(queue: string): Held | undefined {
    const entry = this.held.get(queue);
    if (entry === undefined) return undefined;
    this.held.delete(queue);
    this.heldPerOwner.release(entry.owner);
    return entry;
  }

  /** Deletes what a request made and no longer needs (a failure here leaves it to expire). */
  private async forget(queue: string): Promise<void> {
    const entry = this.release(queue);
    for (const name of [queue, ...(entry?.also ?? [])]) await this.options.store.remove(name).catch(() => false);
  }

  /** Drops what the broker has let expire (every SWEEP_EVERY_MS at most: the map is walked whole). */
  private sweep(): void {
    const now = Date.now();
    if (now - this.sweptAt < SWEEP_EVERY_MS) return;
    this.sweptAt = now;
    for (const [queue, entry] of this.held) if (entry.until <= now) this.release(queue);
  }
}

function ending(request: DeferredRequest): RpcOutcome {
  return request.signal.aborted ? { kind: 'cancelled' } : { kind: 'timeout' };
}

/** What a key's first request leaves for its retries: the call it made, and what the request was. */
function recordOf(call: CallId, fingerprint: string): Reply {
  const body = Buffer.from(JSON.stringify({ call: call.id, fingerprint }));
  return { body, contentType: 'application/json', contentEncoding: undefined, headers: {} };
}

function readRecord(body: Buffer): { call: CallId; fingerprint: string } | undefined {
  try {
    const parsed: unknown = JSON.parse(body.toString('utf8'));
    if (typeof parsed !== 'object' || parsed === null) return undefined;
    const { call, fingerprint } = parsed as Record<string, unknown>;
    const id = typeof call === 'string' ? parseCallId(call) : undefined;
    return id !== undefined && typeof fingerprint === 'string' ? { call: id, fingerprint } : undefined;
  } catch {
    return undefined;
  }
}

function acceptedRecord(): Reply {
  return {
    body: Buffer.alloc(0),
    contentType: undefined,
    contentEncoding: undefined,
    headers: { [OUTCOME_HEADER]: 'accepted' },
  };
}
