import { randomUUID } from 'node:crypto';
import type { Options } from 'amqplib';
import { toError } from '../errors.js';
import type { Reply, RpcOutcome } from './outcome.js';
import {
  ExchangeChecksExhausted,
  type ExchangeVerdict,
  type PublishChannel,
  type RpcSession,
  type SessionEvents,
} from './ports.js';
import { PendingCalls, RpcCall } from './rpc-call.js';
import type { RpcRequest } from './rpc-request.js';

export interface RpcClientOptions {
  /** The broker session that carries the calls: the client binds to it, and hears its channels. */
  readonly session: RpcSession;
  readonly appId: string;
  /** Calls in flight beyond which `start` refuses at once (outcome `overloaded`). */
  readonly maxInFlight: number;
  /** A reply nobody waits for any more (late, duplicate or not ours). */
  readonly onStrayReply: () => void;
  /** A publish filled a channel's buffer. */
  readonly onBackpressure: () => void;
  /** A partial reply (`x-stream: more`) to a caller who asked for one answer: dropped, the final reply answers. */
  readonly onSkippedPart?: (() => void) | undefined;
  /**
   * Probe the default exchange too, as any other: for a caller's own broker user, whose permissions
   * may not include writing to it (a refused publish would close a shared channel).
   */
  readonly checkDefaultExchange?: boolean | undefined;
}

/**
 * The RPC core: starts calls, routes and publishes them, and settles them from what its session's
 * channels report (it is the session's SessionEvents). Replies come back to the channel that published.
 */
export class RpcClient implements SessionEvents {
  private readonly calls = new PendingCalls();
  private readonly session: RpcSession;

  constructor(private readonly options: RpcClientOptions) {
    this.session = options.session;
    this.session.bind(this);
  }

  /** Resolves once no call is in flight (at once if none is): for draining on shutdown. */
  whenIdle(): Promise<void> {
    return this.calls.whenEmpty();
  }

  /** Requests started and not yet settled, across all channels. */
  get inFlightCount(): number {
    return this.calls.size;
  }

  /**
   * Starts a call; never throws. `onOutcome` is called exactly once, and never before `start` has
   * returned. `onPart`, for a caller who streams, hears each partial reply before that. `cancel()` the
   * call if the caller leaves.
   */
  start(request: RpcRequest, onOutcome: (outcome: RpcOutcome) => void, onPart?: (reply: Reply) => void): RpcCall {
    const call = new RpcCall(randomUUID(), request, this.calls, onOutcome, onPart);
    if (this.calls.size > this.options.maxInFlight) {
      // Refused before the broker sees it: memory stays bounded however fast callers arrive.
      settleSoon(call, {
        kind: 'overloaded',
        reason: `more than ${this.options.maxInFlight} requests are in flight (MAX_IN_FLIGHT)`,
      });
    } else if (call.deadline <= Date.now()) {
      // Its whole timeout went on receiving the body: nobody waits for an answer any more.
      settleSoon(call, { kind: 'timeout' });
    } else {
      this.route(call, request);
    }
    return call;
  }

  /** Settles every call still in flight with the same outcome (shutdown). */
  settleAll(outcome: RpcOutcome): void {
    this.calls.settleEach(() => outcome);
  }

  /**
   * The broker blocks publishers (a resource alarm): nothing moves until it clears. A call not yet
   * published is safe to retry (503); one already handed to the broker may still be worked on once
   * the alarm clears, so its caller must not take a retry as safe (502).
   */
  readonly publishersBlocked = (): void => {
    this.releaseAllBlocked('the broker blocks publishers (resource alarm)');
  };

  releaseAllBlocked(reason: string): void {
    const retryAfterMs = this.retryAfterMs();
    this.calls.settleEach((call) =>
      call.isPublished
        ? { kind: 'lost', reason: `${reason}; the request was already published and may still be worked on` }
        : { kind: 'unavailable', reason, retryAfterMs },
    );
  }

  // What the channels report (SessionEvents): arrow properties, so they can be handed on as they are.

  readonly reply = (channel: PublishChannel, correlationId: unknown, reply: Reply): void => {
    // Late (after a timeout or cancel), duplicate, not ours, or come to another channel than the one
    // its request went out on (a worker that answered another request's reply address): dropped on
    // purpose, never thrown.
    const fate = this.calls.deliver(channel, correlationId, reply);
    if (fate === 'stray') this.options.onStrayReply();
    else if (fate === 'skipped') this.options.onSkippedPart?.();
  };

  readonly returned = (correlationId: string, replyCode: number, replyText: string): void => {
    this.calls.find(correlationId)?.settle({ kind: 'unroutable', replyCode, replyText });
  };

  readonly nacked = (correlationId: string): void => {
    // The broker refused the message, so no reply can come.
    this.calls.find(correlationId)?.settle({ kind: 'nacked' });
  };

  readonly confirmed = (correlationId: string): void => {
    this.calls.find(correlationId)?.settle({ kind: 'accepted' });
  };

  readonly backpressure = (): void => {
    this.options.onBackpressure();
  };

  readonly closed = (channel: PublishChannel, reason: string, brokerCode: number | undefined): void => {
    // On a probe, a 403 is the broker refusing the probed exchange: that request was never delivered.
    const outcome: RpcOutcome =
      channel.role === 'probe' && brokerCode === ACCESS_REFUSED
        ? { kind: 'exchange-forbidden', reason }
        : { kind: 'lost', reason };
    this.calls.settleEach((call) => (call.channel === channel ? outcome : undefined));
  };

  /** Milliseconds until the broker connection is tried again, for Retry-After. */
  retryAfterMs(): number {
    return this.session.retryAfterMs();
  }

  private route(call: RpcCall, request: RpcRequest): void {
    const { session } = this;
    if (!session.isConnected || session.isBlocked) {
      const reason = session.isBlocked
        ? 'the broker is blocking publishers (resource alarm)'
        : 'not connected to the broker';
      this.unavailable(call, reason);
      return;
    }
    const verdict =
      request.exchange === '' && this.options.checkDefaultExchange !== true
        ? 'exists'
        : session.cached(request.exchange, request.routingKey);
    if (verdict === 'exists') {
      this.publishWhenWritable(call);
    } else if (verdict !== undefined) {
      settleSoon(call, refusal(verdict));
    } else {
      // The first request to an unchecked exchange rides on the probe itself.
      const publishFirst = (probe: PublishChannel): boolean => {
        if (call.isSettled) return false;
        this.publish(call, probe);
        return call.isPublished;
      };
      session.check(request.exchange, request.routingKey, publishFirst).then(
        (checked) => {
          if (call.isSettled) return;
          if (checked !== 'exists') call.settle(refusal(checked));
          else if (!call.isPublished) this.publishWhenWritable(call);
        },
        (err: unknown) => {
          if (call.isSettled) return;
          if (err instanceof ExchangeChecksExhausted) {
            call.settle({
              kind: 'overloaded',
              reason: `too many exchanges are being checked at once (${err.message})`,
            });
          } else if (!session.isConnected) {
            this.unavailable(call, 'not connected to the broker');
          } else if (call.isPublished) {
            call.settle({ kind: 'lost', reason: `exchange check failed: ${toError(err).message}` });
          } else {
            // Nothing was published: safe to retry.
            this.unavailable(call, `the exchange could not be checked: ${toError(err).message}`);
          }
        },
      );
    }
  }

  private publishWhenWritable(call: RpcCall): void {
    const channel = this.session.pick();
    if (channel === undefined) {
      this.unavailable(call, 'no reply channel is open');
    } else if (channel.isWritable) {
      this.publish(call, channel);
    } else {
      // Backpressure: wait for this channel to drain. The call's own timer still runs meanwhile;
      // the channel holds the call, which lets go of its body if it settles first.
      channel.waitForDrain(call, this.resumeAfterDrain);
    }
  }

  private readonly resumeAfterDrain = (call: RpcCall, channel: PublishChannel): void => {
    if (call.isSettled) return;
    if (channel.isOpen) this.publish(call, channel);
    else this.publishWhenWritable(call);
  };

  private publish(call: RpcCall, channel: PublishChannel): void {
    const request = call.request;
    if (request === undefined) return; // settled meanwhile
    const now = Date.now();
    const remainingMs = call.deadline - now;
    if (remainingMs <= 0) {
      // Waited out its deadline before it could be published: never hand the broker dead work.
      call.settle({ kind: 'timeout' });
      return;
    }
    const { headers, replyTo } = request;
    const rpc = request.mode === 'rpc';
    // A reply that comes to this channel: only an RPC's, and not a deferred one's (it has a queue of its own).
    const repliesHere = rpc && replyTo === undefined;
    const properties: Options.Publish & { correlationId: string } = {
      // A publish has no reply either, but its return and confirm are matched by this id too.
      correlationId: call.correlationId,
      mandatory: true,
      timestamp: Math.floor(now / 1000),
      messageId: request.messageId ?? request.requestId,
      appId: this.options.appId,
      deliveryMode: request.deliveryMode,
      headers,
    };
    if (rpc) {
      properties.replyTo = replyTo ?? channel.replyTo;
      // A request nobody picked up before the caller gave up expires in the queue instead of being worked on.
      properties.expiration = String(remainingMs);
      // Set last, so a client header of the same name cannot move the deadline.
      headers['x-deadline'] = call.deadline;
    }
    if (request.contentType !== undefined) properties.contentType = request.contentType;
    if (request.contentEncoding !== undefined) properties.contentEncoding = request.contentEncoding;
    if (request.priority !== undefined) properties.priority = request.priority;
    if (request.type !== undefined) properties.type = request.type;
    try {
      // A publish (and a deferred RPC) waits for the broker's ack; without confirms, being written is all
      // there is to wait for.
      channel.publish(request.exchange, request.routingKey, request.body, properties, !repliesHere);
      call.published(channel);
      if (!repliesHere && !channel.confirms) settleSoon(call, { kind: 'accepted' });
    } catch (err) {
      settleSoon(call, { kind: 'lost', reason: `publish failed: ${toError(err).message}` });
    }
  }

  private unavailable(call: RpcCall, reason: string): void {
    settleSoon(call, { kind: 'unavailable', reason, retryAfterMs: this.session.retryAfterMs() });
  }
}

const ACCESS_REFUSED = 403;

/** The outcome for an exchange that cannot take the message; nothing was delivered. */
function refusal(verdict: Exclude<ExchangeVerdict, 'exists'>): RpcOutcome {
  switch (verdict) {
    case 'missing':
      return { kind: 'exchange-not-found' };
    case 'invalid-name':
      return { kind: 'exchange-name-refused' };
    case 'forbidden':
      return { kind: 'exchange-forbidden', reason: 'the broker refuses the bridge publishes to this exchange' };
  }
}

/** Keeps the promise of `start`: an outcome known at once is still delivered after it returns. */
function settleSoon(call: RpcCall, outcome: RpcOutcome): void {
  queueMicrotask(() => call.settle(outcome));
}
