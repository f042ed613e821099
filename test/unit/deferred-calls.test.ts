import { describe, expect, it } from 'vitest';
import { readDeferral, readIdempotencyKey, readPreferences } from '../../src/http/deferral.js';
import { callQueueName, keyQueueName, newCallId, parseCallId } from '../../src/rpc/call-ids.js';
import { DeferredCalls, type DeferredRequest } from '../../src/rpc/deferred-calls.js';
import type { KeyClaim, ResultStore, StoredResult } from '../../src/rpc/ports.js';

describe('Prefer (RFC 7240)', () => {
  it.each([
    ['respond-async', { respondAsync: true, waitMs: undefined }],
    ['Respond-Async, wait=10', { respondAsync: true, waitMs: 10_000 }],
    ['wait=5;foo=bar, respond-async;x', { respondAsync: true, waitMs: 5_000 }],
    ['wait="3", wait=9', { respondAsync: false, waitMs: 3_000 }],
    ['wait=-1, wait=1.5, wait=soon', { respondAsync: false, waitMs: undefined }],
    ['return=minimal, handling=lenient', { respondAsync: false, waitMs: undefined }],
  ])('reads %j', (header, expected) => {
    expect(readPreferences(header)).toEqual(expected);
  });

  it('is a plain call without either header, and for a publish that only prefers asynchrony', () => {
    expect(readDeferral({}, 'rpc', 'q')).toBeUndefined();
    expect(readDeferral({ prefer: 'respond-async' }, 'publish', 'q')).toBeUndefined();
    expect(readDeferral({ prefer: 'return=minimal' }, 'rpc', 'q')).toBeUndefined();
    expect(readDeferral({ prefer: 'respond-async; wait=2' }, 'rpc', 'q')).toEqual({
      async: { waitMs: 0 },
      key: undefined,
    });
    expect(readDeferral({ 'idempotency-key': 'k1' }, 'publish', 'q')).toEqual({ async: undefined, key: 'k1' });
  });
});

describe('Idempotency-Key', () => {
  it('takes a quoted string (the draft) or a bare token, and refuses anything a retry could not repeat', () => {
    expect(readIdempotencyKey('"8e03978e-40d5-43e8-bc93-6894a57f9324"', 'q')).toBe(
      '8e03978e-40d5-43e8-bc93-6894a57f9324',
    );
    expect(readIdempotencyKey('"with \\"quotes\\" and spaces"', 'q')).toBe('with "quotes" and spaces');
    expect(readIdempotencyKey('order-42', 'q')).toBe('order-42');
    for (const bad of ['', 'two, keys', 'a b', 'x'.repeat(256), '"unterminated', 'ключ', ['a', 'b']]) {
      expect(() => readIdempotencyKey(bad, 'q'), String(bad)).toThrow(/Idempotency-Key/);
    }
  });
});

describe('call ids', () => {
  it('carry their times, cannot be told apart from noise, and name a queue per caller', () => {
    const call = newCallId(1_800_000_000_000, 1_800_000_600_000);
    expect(call.id).toMatch(/^[A-Za-z0-9_-]{38}$/);
    expect(parseCallId(call.id)).toEqual(call);
    expect(newCallId(1, 2).id).not.toBe(newCallId(1, 2).id);
    expect(parseCallId(`${call.id}A`)).toBeUndefined();
    expect(parseCallId('../../etc/passwd')).toBeUndefined();
    expect(callQueueName('token:alice', call.id)).not.toBe(callQueueName('token:bob', call.id));
    expect(callQueueName('token:alice', call.id)).toMatch(/^rpc-bridge\.call\.[A-Za-z0-9_-]{43}$/);
    // No owner/name pair can be written as another.
    expect(keyQueueName('a', 'b\nc', 1000)).not.toBe(keyQueueName('a\nb', 'c', 1000));
    // Replicas with another window use other queues rather than failing on the broker's argument check.
    expect(keyQueueName('a', 'k', 1000)).not.toBe(keyQueueName('a', 'k', 2000));
  });
});

/** A store in memory: the bookkeeping is the bridge's, what the queues do is the broker's (integration tests). */
class MemoryStore implements ResultStore {
  readonly queues = new Map<string, Buffer[]>();
  async create(queue: string): Promise<void> {
    if (!this.queues.has(queue)) this.queues.set(queue, []);
  }
  async read(queue: string): Promise<StoredResult> {
    const messages = this.queues.get(queue);
    if (messages === undefined) return { kind: 'unknown' };
    const [first] = messages;
    return first === undefined
      ? { kind: 'empty' }
      : { kind: 'reply', reply: { body: first, contentType: undefined, contentEncoding: undefined, headers: {} } };
  }
  async put(queue: string, result: { body: Buffer }): Promise<void> {
    this.queues.get(queue)?.push(result.body);
  }
  async remove(queue: string): Promise<boolean> {
    return this.claims.delete(queue) || this.queues.delete(queue);
  }
  private readonly claims = new Set<string>();
  async claim(queue: string): Promise<KeyClaim> {
    if (this.claims.has(queue)) return 'taken';
    this.claims.add(queue);
    return 'claimed';
  }
}

function request(overrides: Partial<DeferredRequest> = {}): DeferredRequest {
  return {
    owner: 'token:alice',
    operation: 'rpc',
    deadline: Date.now() + 5_000,
    async: { waitMs: 0 },
    key: undefined,
    send: async () => ({ outcome: { kind: 'accepted' }, published: true }),
    signal: new AbortController().signal,
    ...overrides,
  };
}

describe('DeferredCalls', () => {
  const options = { resultTtlMs: 1_000, keyTtlMs: 1_000, maxHeld: 3, maxHeldPerCaller: 2, maxWaiting: 1 };

  it('bounds what it makes the broker keep, per caller and in all, and counts a given-up call no more', async () => {
    const calls = new DeferredCalls({ store: new MemoryStore(), ...options });
    const one = await calls.start(request());
    const two = await calls.start(request());
    expect([one.kind, two.kind]).toEqual(['pending', 'pending']);
    expect(await calls.start(request())).toEqual({ kind: 'refused', refusal: { kind: 'caller-held-limit', limit: 2 } });
    expect((await calls.start(request({ owner: 'token:bob' }))).kind).toBe('pending');
    expect(await calls.start(request({ owner: 'token:carol' }))).toEqual({
      kind: 'refused',
      refusal: { kind: 'held-limit', limit: 3 },
    });
    expect(calls.heldCount).toBe(3);
    if (one.kind !== 'pending') throw new Error('unreachable');
    expect(await calls.cancel('token:bob', one.call.id)).toEqual({ kind: 'unknown' });
    expect(await calls.cancel('token:alice', one.call.id)).toEqual({ kind: 'removed' });
    expect(calls.heldCount).toBe(2);
    expect((await calls.start(request())).kind).toBe('pending');
  });

  it('keeps nothing for a call that was never delivered', async () => {
    const store = new MemoryStore();
    const calls = new DeferredCalls({ store, ...options });
    const result = await calls.start(
      request({
        send: async () => ({ outcome: { kind: 'unroutable', replyCode: 312, replyText: 'NO_ROUTE' }, published: true }),
      }),
    );
    expect(result).toMatchObject({ kind: 'outcome', outcome: { kind: 'unroutable' } });
    expect(store.queues.size).toBe(0);
    expect(calls.heldCount).toBe(0);
  });

  it('lets a key go when its first request was never delivered, so a retry sends it', async () => {
    const store = new MemoryStore();
    const calls = new DeferredCalls({ store, ...options });
    const key = { value: 'k', fingerprint: 'f' };
    const refused = await calls.start(
      request({ async: undefined, key, send: async () => ({ outcome: { kind: 'nacked' }, published: true }) }),
    );
    expect(refused).toMatchObject({ kind: 'outcome', outcome: { kind: 'nacked' }, replayed: false });
    let sent = 0;
    const retried = await calls.start(
      request({
        async: { waitMs: 0 },
        key,
        send: async () => {
          sent += 1;
          return { outcome: { kind: 'accepted' }, published: true };
        },
      }),
    );
    expect(retried).toMatchObject({ kind: 'pending', replayed: false });
    expect(sent).toBe(1);
  });

  it('keeps a key whose request the broker may have (timed out after publishing): a retry waits, never sends again', async () => {
    const store = new MemoryStore();
    const calls = new DeferredCalls({ store, ...options, maxWaiting: 4 });
    const key = { value: 'k', fingerprint: 'f' };
    const deadline = Date.now() + 50;
    const first = await calls.start(
      request({
        async: undefined,
        key,
        deadline,
        send: async () => ({ outcome: { kind: 'timeout' }, published: true }),
      }),
    );
    expect(first).toMatchObject({ kind: 'outcome', outcome: { kind: 'timeout' } });
    let sent = 0;
    const retry = await calls.start(
      request({
        async: undefined,
        key,
        deadline: Date.now() + 50,
        send: async () => {
          sent += 1;
          return { outcome: { kind: 'accepted' }, published: true };
        },
      }),
    );
    expect(retry).toMatchObject({ kind: 'outcome', outcome: { kind: 'timeout' }, replayed: true });
    expect(sent).toBe(0);
    const other = await calls.start(request({ async: undefined, key: { value: 'k', fingerprint: 'g' } }));
    expect(other).toEqual({ kind: 'refused', refusal: { kind: 'key-reused' } });
  });

  it('lets one caller have half of CALLS_MAX_WAITING under way, and no more', async () => {
    const store = new MemoryStore();
    let release!: () => void;
    const blocked = new Promise<void>((resolve) => {
      release = resolve;
    });
    store.create = () => blocked;
    const calls = new DeferredCalls({ store, ...options, maxHeld: 100, maxHeldPerCaller: 100, maxWaiting: 4 });
    const underWay = [calls.start(request()), calls.start(request())];
    expect(await calls.start(request())).toEqual({
      kind: 'refused',
      refusal: { kind: 'caller-waiting-limit', limit: 2 },
    });
    const bobs = [calls.start(request({ owner: 'token:bob' })), calls.start(request({ owner: 'token:bob' }))];
    expect(await calls.start(request({ owner: 'token:carol' }))).toEqual({
      kind: 'refused',
      refusal: { kind: 'waiting-limit', limit: 4 },
    });
    expect(calls.waitingCount).toBe(4);
    release();
    await Promise.all([...underWay, ...bobs]);
    await calls.whenIdle();
    expect(calls.waitingCount).toBe(0);
  });

  it('answers 404 from the id alone once the call is past what is kept, without asking the broker', async () => {
    const store = new MemoryStore();
    store.read = () => Promise.reject(new Error('the broker was asked'));
    const calls = new DeferredCalls({ store, ...options });
    const old = newCallId(Date.now() - 2_000, Date.now() - 1);
    expect(await calls.lookup('token:alice', old.id, 0)).toEqual({ kind: 'unknown' });
    expect(await calls.lookup('token:alice', 'not-an-id', 0)).toEqual({ kind: 'unknown' });
  });
});
