/**
 * The RPC core's own bookkeeping, driven through its ports with small fakes: every way a call can end
 * races every other, and exactly one outcome must reach the caller. What the broker decides (routing,
 * returns, channel errors) is tested against real brokers in test/integration; nothing here stands in
 * for it, the fakes only say "this happened".
 */
import type { Options } from 'amqplib';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Reply, RpcOutcome } from '../../src/rpc/outcome.js';
import type { ExchangeVerdict, PublishChannel, RpcSession } from '../../src/rpc/ports.js';
import { RpcClient } from '../../src/rpc/rpc-client.js';
import type { RpcRequest } from '../../src/rpc/rpc-request.js';

interface Published {
  readonly correlationId: string;
  readonly exchange: string;
  readonly routingKey: string;
  readonly properties: Options.Publish;
}

class FakeChannel implements PublishChannel {
  readonly replyTo = 'amq.rabbitmq.reply-to';
  readonly confirms = true;
  readonly published: Published[] = [];
  isOpen = true;
  isWritable = true;
  /** What the core did with the channel's hold (a probe closes once every holder has released it). */
  readonly holds = { held: 0, released: 0 };
  private waiters: Array<() => void> = [];

  constructor(readonly role: 'shared' | 'probe' = 'shared') {}

  publish(
    exchange: string,
    routingKey: string,
    _body: Buffer,
    properties: Options.Publish & { correlationId: string },
  ) {
    this.published.push({ correlationId: properties.correlationId, exchange, routingKey, properties });
  }

  waitForDrain<Waiter extends { readonly isSettled: boolean }>(
    waiter: Waiter,
    resume: (waiter: Waiter, channel: PublishChannel) => void,
  ): void {
    this.waiters.push(() => resume(waiter, this));
  }

  drain(): void {
    this.isWritable = true;
    for (const resume of this.waiters.splice(0)) resume();
  }

  hold(): void {
    this.holds.held += 1;
  }

  release(): void {
    this.holds.released += 1;
  }

  get waiting(): number {
    return this.waiters.length;
  }
}

const reply = (text: string): Reply => ({
  body: Buffer.from(text),
  contentType: 'text/plain',
  contentEncoding: undefined,
  headers: {},
});

function request(overrides: Partial<RpcRequest> = {}): RpcRequest {
  return {
    mode: 'rpc',
    deliveryMode: 1,
    exchange: '',
    routingKey: 'q',
    body: Buffer.from('x'),
    timeoutMs: 1_000,
    receivedAt: Date.now(),
    requestId: 'r',
    contentType: undefined,
    contentEncoding: undefined,
    headers: {},
    priority: undefined,
    type: undefined,
    messageId: undefined,
    ...overrides,
  };
}

/** A core on fakes; `outcomes` records what each call's caller heard, and how often. */
function core(
  options: {
    channels?: FakeChannel[];
    maxInFlight?: number;
    cached?: ExchangeVerdict;
    checkDefaultExchange?: boolean;
  } = {},
) {
  const channels = options.channels ?? [new FakeChannel()];
  const broker = { isConnected: true, isBlocked: false, retryAfterMs: () => 1_500 };
  const stray = vi.fn();
  const skipped = vi.fn();
  let next = 0;
  let probeQuestion: ((probe: PublishChannel) => boolean) | undefined;
  let answerProbe: ((verdict: ExchangeVerdict) => void) | undefined;
  let question: Promise<ExchangeVerdict> | undefined;
  // A session as the core sees it (the RpcSession port): state, channels in turn, exchange answers.
  const session: RpcSession = {
    get isConnected() {
      return broker.isConnected;
    },
    get isBlocked() {
      return broker.isBlocked;
    },
    retryAfterMs: () => broker.retryAfterMs(),
    bind: () => undefined,
    pick: () => {
      const open = channels.filter((channel) => channel.isOpen);
      if (open.length === 0) return undefined;
      const writable = open.filter((channel) => channel.isWritable);
      return (writable.length > 0 ? writable : open)[next++ % (writable.length || open.length)];
    },
    cached: () => options.cached,
    // One question per exchange at a time, as the real gate asks: later calls wait for its answer.
    check: (_exchange, _routingKey, publishFirst) => {
      if (question === undefined) {
        probeQuestion = publishFirst;
        question = new Promise((resolve) => {
          answerProbe = resolve;
        });
      }
      return question;
    },
  };
  const rpc = new RpcClient({
    session,
    appId: 'test',
    maxInFlight: options.maxInFlight ?? 100,
    onStrayReply: stray,
    onSkippedPart: skipped,
    onBackpressure: () => undefined,
    checkDefaultExchange: options.checkDefaultExchange,
  });
  const heard: RpcOutcome[][] = [];
  const start = (req: RpcRequest = request()) => {
    const outcomes: RpcOutcome[] = [];
    heard.push(outcomes);
    const call = rpc.start(req, (outcome) => outcomes.push(outcome));
    return { call, outcomes };
  };
  /** A call whose caller asked for a stream: its parts are heard too. */
  const startStream = (req: RpcRequest = request()) => {
    const outcomes: RpcOutcome[] = [];
    const parts: Reply[] = [];
    const call = rpc.start(
      req,
      (outcome) => outcomes.push(outcome),
      (part) => parts.push(part),
    );
    return { call, outcomes, parts };
  };
  return {
    rpc,
    broker,
    channels,
    stray,
    skipped,
    startStream,
    start,
    heard,
    probe: {
      carry: (probe: PublishChannel) => probeQuestion?.(probe),
      answer: (verdict: ExchangeVerdict) => answerProbe?.(verdict),
    },
  };
}

beforeEach(() => {
  vi.useFakeTimers();
});

afterEach(() => {
  vi.useRealTimers();
});

describe('the RPC core settles each call exactly once', () => {
  it('delivers the reply, and counts a second reply for the same id as stray', () => {
    const { rpc, channels, start, stray } = core();
    const { call, outcomes } = start();
    const [published] = channels[0]?.published ?? [];
    expect(published?.correlationId).toBe(call.correlationId);
    rpc.reply(call.channel as PublishChannel, call.correlationId, reply('one'));
    rpc.reply(call.channel as PublishChannel, call.correlationId, reply('two'));
    expect(outcomes).toEqual([{ kind: 'reply', reply: reply('one') }]);
    expect(stray).toHaveBeenCalledTimes(1);
    expect(rpc.inFlightCount).toBe(0);
  });

  it('hands a streaming call each x-stream: more reply as a part, and settles it on the first reply without', () => {
    const { rpc, startStream, stray } = core();
    const { call, outcomes, parts } = startStream(request({ timeoutMs: 500 }));
    const channel = call.channel as PublishChannel;
    const part = (text: string): Reply => ({ ...reply(text), headers: { 'x-stream': 'more' } });
    rpc.reply(channel, call.correlationId, part('one'));
    rpc.reply(channel, call.correlationId, part('two'));
    expect(parts.map((p) => p.body.toString())).toEqual(['one', 'two']);
    expect(outcomes).toEqual([]);
    expect(rpc.inFlightCount).toBe(1);
    const last = { ...reply('end'), headers: { 'x-stream': 'end' } };
    rpc.reply(channel, call.correlationId, last);
    expect(outcomes).toEqual([{ kind: 'reply', reply: last }]);
    rpc.reply(channel, call.correlationId, part('late'));
    expect(parts).toHaveLength(2);
    expect(stray).toHaveBeenCalledTimes(1);
  });

  it('times a streaming call out at its one deadline, however many parts came', () => {
    const { rpc, startStream } = core();
    const { call, outcomes, parts } = startStream(request({ timeoutMs: 500 }));
    vi.advanceTimersByTime(400);
    rpc.reply(call.channel as PublishChannel, call.correlationId, { ...reply('p'), headers: { 'x-stream': 'more' } });
    vi.advanceTimersByTime(100);
    expect(parts).toHaveLength(1);
    expect(outcomes).toEqual([{ kind: 'timeout' }]);
  });

  it('skips the parts of a call whose caller asked for one answer, which the final reply settles', () => {
    const { rpc, start, skipped, stray } = core();
    const { call, outcomes } = start();
    const channel = call.channel as PublishChannel;
    rpc.reply(channel, call.correlationId, { ...reply('p'), headers: { 'x-stream': 'more' } });
    expect(outcomes).toEqual([]);
    expect(skipped).toHaveBeenCalledTimes(1);
    rpc.reply(channel, call.correlationId, reply('whole'));
    expect(outcomes).toEqual([{ kind: 'reply', reply: reply('whole') }]);
    expect(stray).not.toHaveBeenCalled();
  });

  it('times out at the deadline, drops the request, and a reply after it is stray', () => {
    const { rpc, start, stray } = core();
    const { call, outcomes } = start(request({ timeoutMs: 500 }));
    vi.advanceTimersByTime(499);
    expect(outcomes).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(outcomes).toEqual([{ kind: 'timeout' }]);
    expect(call.request).toBeUndefined();
    rpc.reply(call.channel as PublishChannel, call.correlationId, reply('late'));
    expect(outcomes).toHaveLength(1);
    expect(stray).toHaveBeenCalledTimes(1);
  });

  it('counts the deadline from arrival: time before start is not granted again', () => {
    const { channels, start } = core();
    const { outcomes } = start(request({ timeoutMs: 1_000, receivedAt: Date.now() - 600 }));
    expect(Number(channels[0]?.published[0]?.properties.expiration)).toBe(400);
    vi.advanceTimersByTime(400);
    expect(outcomes).toEqual([{ kind: 'timeout' }]);
  });

  it('answers a call whose deadline passed before it started with a timeout, never publishing it', async () => {
    const { channels, start } = core();
    const { outcomes } = start(request({ timeoutMs: 100, receivedAt: Date.now() - 200 }));
    expect(outcomes).toEqual([]); // never before start has returned
    await Promise.resolve();
    expect(outcomes).toEqual([{ kind: 'timeout' }]);
    expect(channels[0]?.published).toEqual([]);
  });

  it('takes a return as unroutable, and ignores a nack that follows it', () => {
    const { rpc, start } = core();
    const { call, outcomes } = start();
    rpc.returned(call.correlationId, 312, 'NO_ROUTE');
    rpc.nacked(call.correlationId);
    expect(outcomes).toEqual([{ kind: 'unroutable', replyCode: 312, replyText: 'NO_ROUTE' }]);
  });

  it('ignores a reply for a cancelled call, and a cancel after the reply', () => {
    const { rpc, start, stray } = core();
    const first = start();
    first.call.cancel();
    rpc.reply(first.call.channel as PublishChannel, first.call.correlationId, reply('nobody listens'));
    expect(first.outcomes).toEqual([{ kind: 'cancelled' }]);
    expect(stray).toHaveBeenCalledTimes(1);
    const second = start();
    rpc.reply(second.call.channel as PublishChannel, second.call.correlationId, reply('in time'));
    second.call.cancel();
    expect(second.outcomes.map((outcome) => outcome.kind)).toEqual(['reply']);
  });

  it('loses the calls on a channel that closes, and only those', () => {
    const channels = [new FakeChannel(), new FakeChannel()];
    const { rpc, start } = core({ channels });
    const onFirst = start();
    const onSecond = start();
    expect(onFirst.call.channel).toBe(channels[0]);
    expect(onSecond.call.channel).toBe(channels[1]);
    rpc.closed(channels[0] as FakeChannel, 'NOT_FOUND - no exchange', 404);
    expect(onFirst.outcomes).toEqual([{ kind: 'lost', reason: 'NOT_FOUND - no exchange' }]);
    expect(onSecond.outcomes).toEqual([]);
    rpc.reply(onSecond.call.channel as PublishChannel, onSecond.call.correlationId, reply('fine'));
    expect(onSecond.outcomes.map((outcome) => outcome.kind)).toEqual(['reply']);
  });

  it('a channel closing after a reply changes nothing for that call', () => {
    const { rpc, channels, start } = core();
    const { call, outcomes } = start();
    rpc.reply(call.channel as PublishChannel, call.correlationId, reply('done'));
    rpc.closed(channels[0] as FakeChannel, 'gone', 320);
    vi.advanceTimersByTime(5_000);
    expect(outcomes.map((outcome) => outcome.kind)).toEqual(['reply']);
  });

  it('refuses past MAX_IN_FLIGHT, after start has returned', async () => {
    const { start } = core({ maxInFlight: 1 });
    start();
    const { outcomes } = start();
    expect(outcomes).toEqual([]);
    await Promise.resolve();
    expect(outcomes.map((outcome) => outcome.kind)).toEqual(['overloaded']);
  });

  it('on a resource alarm answers published calls 502 (lost) and unpublished ones 503 (unavailable)', async () => {
    const channel = new FakeChannel();
    const { rpc, start } = core({ channels: [channel] });
    const published = start();
    channel.isWritable = false;
    const waiting = start();
    expect(waiting.call.isPublished).toBe(false);
    rpc.releaseAllBlocked('the broker blocks publishers');
    expect(published.outcomes[0]?.kind).toBe('lost');
    expect(waiting.outcomes[0]).toEqual({
      kind: 'unavailable',
      reason: 'the broker blocks publishers',
      retryAfterMs: 1_500,
    });
  });
});

describe('backpressure', () => {
  it('publishes a waiting call once its channel drains', () => {
    const channel = new FakeChannel();
    const { start } = core({ channels: [channel] });
    channel.isWritable = false;
    const { call } = start();
    expect(channel.published).toHaveLength(0);
    channel.drain();
    expect(channel.published.map((entry) => entry.correlationId)).toEqual([call.correlationId]);
  });

  it('a call that times out while waiting is never published, and lets go of its body', () => {
    const channel = new FakeChannel();
    const { start } = core({ channels: [channel] });
    channel.isWritable = false;
    const { call, outcomes } = start(request({ timeoutMs: 100 }));
    vi.advanceTimersByTime(100);
    expect(outcomes).toEqual([{ kind: 'timeout' }]);
    expect(call.request).toBeUndefined();
    channel.drain();
    expect(channel.published).toHaveLength(0);
  });

  it('a call waiting on a channel that closes moves to another open one', () => {
    const stuck = new FakeChannel();
    const spare = new FakeChannel();
    stuck.isWritable = false;
    spare.isWritable = false;
    const { start } = core({ channels: [stuck, spare] });
    const { call } = start();
    spare.isWritable = true;
    stuck.isOpen = false;
    stuck.drain(); // a closed channel releases its waiters too
    expect(spare.published.map((entry) => entry.correlationId)).toEqual([call.correlationId]);
  });
});

describe('a probe channel for an unchecked exchange', () => {
  it('carries the first request, holds the probe until that is answered, and later requests use the shared channels', async () => {
    const { rpc, channels, start, probe } = core();
    const first = start(request({ exchange: 'orders' }));
    const second = start(request({ exchange: 'orders' }));
    const probeChannel = new FakeChannel('probe');
    expect(probe.carry(probeChannel)).toBe(true);
    expect(probeChannel.published.map((entry) => entry.correlationId)).toEqual([first.call.correlationId]);
    expect(probeChannel.holds).toEqual({ held: 1, released: 0 });
    probe.answer('exists');
    await vi.waitFor(() => expect(channels[0]?.published).toHaveLength(1));
    expect(channels[0]?.published[0]?.correlationId).toBe(second.call.correlationId);
    expect(probeChannel.holds).toEqual({ held: 1, released: 0 });
    rpc.reply(first.call.channel as PublishChannel, first.call.correlationId, reply('first'));
    expect(first.outcomes.map((outcome) => outcome.kind)).toEqual(['reply']);
    expect(probeChannel.holds).toEqual({ held: 1, released: 1 });
  });

  it('lets go of the probe once when the publish it carries is acked, whatever else happens to that call', async () => {
    const { rpc, start, probe } = core();
    const first = start(request({ exchange: 'events', mode: 'publish' }));
    const probeChannel = new FakeChannel('probe');
    probe.carry(probeChannel);
    expect(probeChannel.holds).toEqual({ held: 1, released: 0 });
    rpc.confirmed(first.call.correlationId); // the ack may precede the exchange check's answer
    expect(first.outcomes).toEqual([{ kind: 'accepted' }]);
    expect(probeChannel.holds).toEqual({ held: 1, released: 1 });
    // Its other endings come too late to release the probe a second time (the checker still holds it).
    rpc.returned(first.call.correlationId, 312, 'NO_ROUTE');
    rpc.closed(probeChannel, 'gone', 320);
    vi.advanceTimersByTime(5_000);
    expect(probeChannel.holds).toEqual({ held: 1, released: 1 });
    expect(first.outcomes).toHaveLength(1);
  });

  it("probes the default exchange too for a caller's own broker user, whose permissions may exclude it", async () => {
    const own = core({ checkDefaultExchange: true });
    const first = own.start(request({ exchange: '' }));
    const probeChannel = new FakeChannel('probe');
    expect(own.probe.carry(probeChannel)).toBe(true);
    expect(own.channels[0]?.published).toHaveLength(0);
    own.rpc.closed(probeChannel, "ACCESS_REFUSED - access to exchange 'amq.default' refused", 403);
    expect(first.outcomes).toEqual([{ kind: 'exchange-forbidden', reason: expect.stringContaining('amq.default') }]);
    // The bridge's own identity writes to the default exchange without asking.
    const bridge = core();
    bridge.start(request({ exchange: '' }));
    expect(bridge.channels[0]?.published).toHaveLength(1);
  });

  it('answers 403 (exchange-forbidden) when the broker closes the probe with ACCESS_REFUSED', async () => {
    const { rpc, start, probe } = core();
    const first = start(request({ exchange: 'internal' }));
    const second = start(request({ exchange: 'internal' }));
    const probeChannel = new FakeChannel('probe');
    probe.carry(probeChannel);
    rpc.closed(probeChannel, 'ACCESS_REFUSED - internal', 403);
    probe.answer('forbidden');
    await vi.waitFor(() => expect(second.outcomes).toHaveLength(1));
    expect(first.outcomes).toEqual([{ kind: 'exchange-forbidden', reason: 'ACCESS_REFUSED - internal' }]);
    expect(second.outcomes[0]?.kind).toBe('exchange-forbidden');
  });

  it('answers from the cache without a probe', async () => {
    const { start } = core({ cached: 'missing' });
    const { outcomes } = start(request({ exchange: 'gone' }));
    await Promise.resolve();
    expect(outcomes).toEqual([{ kind: 'exchange-not-found' }]);
  });
});
