import type { ReplyChannel } from '../amqp/reply-channel.js';
import type { PendingCall, RpcOutcome } from './outcome.js';
import type { RpcRequest } from './rpc-client.js';

/**
 * One request on its way through the broker. Settles exactly once, whichever comes first: the reply,
 * a basic.return, the loss of its channel, its timeout, or the caller going away. Settling clears the
 * timer and removes the call from its channel, so a reply that turns up afterwards is stray.
 */
export class RpcCall implements PendingCall {
  private readonly timer: NodeJS.Timeout;
  private channel: ReplyChannel | undefined;
  private settled = false;
  private publishedAt = 0;
  private settledAt = 0;

  /**
   * `onOutcome` hears how the call ended, exactly once (a callback rather than a promise: no
   * allocation or microtask hop on the hot path). `onSettled` is the client's own bookkeeping.
   */
  /**
   * What is still to be published; dropped when the call settles, so that a call that timed out
   * while waiting (for a channel to drain, say) no longer holds its body.
   */
  private pendingRequest: RpcRequest | undefined;
  /** Epoch ms: fixed when the HTTP request arrived; the timer, x-deadline and expiration all follow it. */
  readonly deadline: number;

  constructor(
    readonly correlationId: string,
    request: RpcRequest,
    private readonly onSettled: (call: RpcCall) => void,
    private readonly onOutcome: (outcome: RpcOutcome) => void,
  ) {
    this.pendingRequest = request;
    this.deadline = request.receivedAt + request.timeoutMs;
    // A module-level callback with the call as argument: no closure per request.
    this.timer = setTimeout(expire, Math.max(0, this.deadline - Date.now()), this);
  }

  /** The request, until the call settles. */
  get request(): RpcRequest | undefined {
    return this.pendingRequest;
  }

  get isSettled(): boolean {
    return this.settled;
  }

  get isPublished(): boolean {
    return this.publishedAt !== 0;
  }

  /** Milliseconds from publish to settlement (0 if it was never published). */
  get roundTripMs(): number {
    return this.publishedAt === 0 ? 0 : this.settledAt - this.publishedAt;
  }

  /** Called once the message is handed to the channel. */
  published(channel: ReplyChannel): void {
    this.channel = channel;
    this.publishedAt = performance.now();
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
    this.channel?.forget(this.correlationId);
    this.onSettled(this);
    this.onOutcome(outcome);
  }
}

function expire(call: RpcCall): void {
  call.settle({ kind: 'timeout' });
}
