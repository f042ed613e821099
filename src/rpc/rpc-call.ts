import { isPartialReply, type Reply, type RpcOutcome } from './outcome.js';
import type { PublishChannel } from './ports.js';
import type { RpcRequest } from './rpc-request.js';

/**
 * One RPC from start to end. It settles exactly once, whichever comes first: the reply, a
 * basic.return, a nack, the loss of its channel, its deadline, or the caller going away. Settling
 * clears the timer, drops the request (its body), takes the call out of the pending calls (so a reply
 * that turns up afterwards is stray) and releases a probe channel that carried it.
 */
export class RpcCall {
  private readonly timer: NodeJS.Timeout;
  private pendingRequest: RpcRequest | undefined;
  private publishedOn: PublishChannel | undefined;
  private settled = false;
  private publishedAt = 0;
  private settledAt = 0;
  /** Epoch ms: fixed when the HTTP request arrived; the timer, x-deadline and expiration all follow it. */
  readonly deadline: number;

  /**
   * `onOutcome` hears how the call ended, exactly once (a callback rather than a promise: no
   * allocation or microtask hop on the hot path).
   */
  constructor(
    readonly correlationId: string,
    request: RpcRequest,
    private readonly calls: PendingCalls,
    private readonly onOutcome: (outcome: RpcOutcome) => void,
    /** Hears each partial reply (`x-stream: more`) of a caller who asked for a stream; undefined: nobody did. */
    private readonly onPart: ((reply: Reply) => void) | undefined = undefined,
  ) {
    this.pendingRequest = request;
    this.deadline = request.receivedAt + request.timeoutMs;
    calls.add(this);
    // A module-level callback with the call as argument: no closure per request.
    this.timer = setTimeout(expire, Math.max(0, this.deadline - Date.now()), this);
  }

  /** The request, until the call is published or settles. */
  get request(): RpcRequest | undefined {
    return this.pendingRequest;
  }

  get isSettled(): boolean {
    return this.settled;
  }

  get isPublished(): boolean {
    return this.publishedOn !== undefined;
  }

  /** The channel it was published on; replies, returns and the channel's loss concern it there. */
  get channel(): PublishChannel | undefined {
    return this.publishedOn;
  }

  /** Milliseconds from publish to settlement (0 if it was never published). */
  get roundTripMs(): number {
    return this.publishedOn === undefined ? 0 : this.settledAt - this.publishedAt;
  }

  /** Called once the message is handed to the channel. */
  published(channel: PublishChannel): void {
    this.publishedOn = channel;
    // amqplib has copied the body into its frames: held on to for the round trip, a big body outlives
    // two scavenges and then only a mark-compact frees it (measured: one per ~3 requests at 1 MiB).
    this.pendingRequest = undefined;
    if (channel.role === 'probe') channel.hold();
    this.publishedAt = performance.now();
  }

  /**
   * A partial reply: relayed to a streaming caller, the call staying pending (same timer, same
   * deadline). False when the caller asked for one answer: the worker's final reply is that answer.
   */
  part(reply: Reply): boolean {
    if (this.settled || this.onPart === undefined) return false;
    this.onPart(reply);
    return true;
  }

  /** The HTTP client went away: nobody is left to answer. */
  cancel(): void {
    this.settle({ kind: 'cancelled' });
  }

  settle(outcome: RpcOutcome): void {
    if (this.settled) return;
    this.settled = true;
    this.settledAt = performance.now();
    this.pendingRequest = undefined;
    clearTimeout(this.timer);
    this.calls.remove(this);
    // A probe carried this one request; it closes once its exchange check is done with it too.
    if (this.publishedOn?.role === 'probe') this.publishedOn.release();
    this.onOutcome(outcome);
  }
}

/** What became of a reply: it settled its call, was relayed as a part, was a part nobody streams, or nobody waits for it. */
export type ReplyFate = 'settled' | 'part' | 'skipped' | 'stray';

function expire(call: RpcCall): void {
  call.settle({ kind: 'timeout' });
}

/**
 * The calls started and not yet settled, by correlation id: the one place the bridge looks up
 * whom a reply, a return or a nack is for, and what a lost channel or a shutdown leaves unanswered.
 */
export class PendingCalls {
  private readonly byCorrelationId = new Map<string, RpcCall>();
  private emptyWaiters: Array<() => void> = [];

  get size(): number {
    return this.byCorrelationId.size;
  }

  add(call: RpcCall): void {
    this.byCorrelationId.set(call.correlationId, call);
  }

  remove(call: RpcCall): void {
    this.byCorrelationId.delete(call.correlationId);
    if (this.byCorrelationId.size === 0 && this.emptyWaiters.length > 0) {
      const waiters = this.emptyWaiters;
      this.emptyWaiters = [];
      for (const resolve of waiters) resolve();
    }
  }

  /** Resolves once no call is pending (at once if none is). */
  whenEmpty(): Promise<void> {
    if (this.byCorrelationId.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.emptyWaiters.push(resolve));
  }

  /** The call waiting for this id, if any: a late, duplicate or foreign id finds none. */
  find(correlationId: unknown): RpcCall | undefined {
    return typeof correlationId === 'string' ? this.byCorrelationId.get(correlationId) : undefined;
  }

  /** Settles every call with the outcome `outcomeOf` gives it (a copy: settling removes them). */
  settleEach(outcomeOf: (call: RpcCall) => RpcOutcome | undefined): void {
    for (const call of [...this.byCorrelationId.values()]) {
      const outcome = outcomeOf(call);
      if (outcome !== undefined) call.settle(outcome);
    }
  }

  /**
   * Hands a reply to the call it is for: `stray` when nobody waits for it on this channel. Replies come
   * back to the channel that published the request (direct reply-to delivers nowhere else, and each
   * callback queue is its channel's own), so a reply on another channel is not this call's, whatever
   * its id. A worker may send several replies with one correlation id: those with `x-stream: more` are
   * parts (relayed to a streaming caller, `skipped` for one who asked for one answer), and the first
   * without it settles the call.
   */
  deliver(channel: PublishChannel, correlationId: unknown, reply: Reply): ReplyFate {
    const call = this.find(correlationId);
    if (call === undefined || call.channel !== channel) return 'stray';
    if (isPartialReply(reply.headers)) return call.part(reply) ? 'part' : 'skipped';
    call.settle({ kind: 'reply', reply });
    return 'settled';
  }
}
