import request from 'supertest';
import { describe, expect, it } from 'vitest';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { waitFor } from '../helpers/bridge.js';
import { startRawWorker, uniqueName } from '../helpers/broker.js';
import { useEchoBridge } from '../helpers/fixture.js';

// Every request here comes from one caller: no share of its own (route-admission.test.ts tests the shares).
const fixture = useEchoBridge({ MAX_IN_FLIGHT: '3', MAX_IN_FLIGHT_PER_CALLER: '100' });
const { echoQueue } = fixture;

describe('overload', () => {
  it('refuses a request beyond MAX_IN_FLIGHT at once with 503 and Retry-After, and serves again after', async () => {
    const stuck = uniqueName('stuck');
    await startRawWorker(fixture.broker, stuck, () => undefined);
    const held = Array.from({ length: 3 }, () =>
      request(fixture.bridge.baseUrl).post(`/rpc/${stuck}`).set('Amqp-Timeout', '1500').send('hold'),
    );
    const heldDone = Promise.all(held.map((req) => req.then((res) => res.status)));
    await waitFor(() => fixture.bridge.bridge.rpc.inFlightCount === 3, 3_000, 'three requests in flight');

    const started = Date.now();
    const refused = await request(fixture.bridge.baseUrl).post(`/rpc/${echoQueue}`).send('one too many');
    expect(refused.status).toBe(503);
    expect(refused.headers['retry-after']).toBe('1');
    expect(refused.body.type).toBe(`${PROBLEM_TYPE_PREFIX}overloaded`);
    expect(Date.now() - started).toBeLessThan(500);
    expect(
      await fixture.bridge.metric('rpc_request_duration_seconds_count', { queue: echoQueue, outcome: 'overloaded' }),
    ).toBe(1);

    expect(await heldDone).toEqual([504, 504, 504]);
    expect(fixture.bridge.bridge.rpc.inFlightCount).toBe(0);
    const served = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${echoQueue}`)
      .set('Content-Type', 'text/plain')
      .send('ok');
    expect(served.status).toBe(200);
  });
});

describe('a queue that refuses messages (x-overflow: reject-publish)', () => {
  it('answers 503 at once from the broker nack instead of waiting for the timeout', async () => {
    const full = uniqueName('full');
    await fixture.broker.channel.assertQueue(full, {
      durable: false,
      expires: 30_000,
      arguments: { 'x-max-length': 1, 'x-overflow': 'reject-publish' },
    });
    try {
      // Fills the queue (nobody consumes it) and waits there until its own timeout.
      const first = request(fixture.bridge.baseUrl).post(`/rpc/${full}`).set('Amqp-Timeout', '3000').send('first');
      const firstDone = first.then((res) => res.status);
      await waitFor(() => fixture.bridge.bridge.rpc.inFlightCount === 1, 3_000, 'the first request in flight');
      await expect.poll(async () => (await fixture.broker.channel.checkQueue(full)).messageCount).toBe(1);

      const started = Date.now();
      const refused = await request(fixture.bridge.baseUrl)
        .post(`/rpc/${full}`)
        .set('Amqp-Timeout', '10000')
        .send('second');
      expect(refused.status).toBe(503);
      expect(refused.body.type).toBe(`${PROBLEM_TYPE_PREFIX}broker-rejected`);
      expect(refused.headers['retry-after']).toBe('1');
      expect(Date.now() - started).toBeLessThan(1_000);
      expect(
        await fixture.bridge.metric('rpc_request_duration_seconds_count', { queue: full, outcome: 'nacked' }),
      ).toBe(1);
      expect(await firstDone).toBe(504);
      expect(await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true })).toBe(0);
    } finally {
      await fixture.broker.channel.deleteQueue(full);
    }
  });
});
