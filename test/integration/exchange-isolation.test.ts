/**
 * No caller can make the broker close a channel other callers share. A publish the broker refuses
 * (an internal exchange, one the bridge's broker user may not write to, a missing one) closes the
 * channel it came on, so the first request to an exchange goes on a probe channel of its own.
 */
import { randomBytes } from 'node:crypto';
import { Agent } from 'node:http';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { AMQP_URL, uniqueName } from '../helpers/broker.js';
import { brokerAdmin } from '../helpers/broker-admin.js';
import { useEchoBridge } from '../helpers/fixture.js';

const admin = await brokerAdmin();
const user = uniqueName('limited-user');
const password = randomBytes(12).toString('hex');
const internalExchange = uniqueName('internal');
// The bridge's user may write anywhere but here: the README's advice, turned against a caller.
const deniedExchange = `test.denied.${randomBytes(6).toString('hex')}`;
const url = new URL(AMQP_URL);
url.username = user;
url.password = password;

// Hooks run in the order registered, after-hooks in reverse: the user exists before the fixture's
// bridge connects as it, and is deleted after the bridge has closed.
beforeAll(async () => {
  await admin.addUser(user, password, { configure: '.*', write: '^(?!test\\.denied\\.).*', read: '.*' });
});
afterAll(async () => {
  await admin.deleteUser(user).catch(() => undefined);
});

// A short check TTL, so that the drill also sees the cached answers expire and be asked again.
const fixture = useEchoBridge({ AMQP_URL: url.toString(), EXCHANGE_CHECK_TTL_MS: '1000' });
const { echoQueue } = fixture;

beforeAll(async () => {
  await fixture.broker.channel.assertExchange(internalExchange, 'fanout', { durable: false, internal: true });
  await fixture.broker.channel.assertExchange(deniedExchange, 'fanout', { durable: false });
});
afterAll(async () => {
  await fixture.broker.channel.deleteExchange(internalExchange).catch(() => undefined);
  await fixture.broker.channel.deleteExchange(deniedExchange).catch(() => undefined);
});

type Tally = Record<string, number>;
const count = (tally: Tally, key: string | number) => {
  tally[key] = (tally[key] ?? 0) + 1;
};

describe('a caller hammering exchanges the broker refuses', () => {
  it('gets 403 of its own while 200 good requests all succeed, no shared channel closes and /readyz stays 200', async () => {
    const closesBefore = await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true });
    const hostile: Tally = {};
    const hostileTypes = new Set<string>();
    const good: Tally = {};
    const readyz: Tally = {};
    let hammering = true;

    const hammer = async () => {
      let turn = 0;
      while (hammering) {
        const exchange = turn++ % 2 === 0 ? internalExchange : deniedExchange;
        const res = await request(fixture.bridge.baseUrl).post(`/rpc/${exchange}/k`).send('x');
        count(hostile, res.status);
        hostileTypes.add(String(res.body.type));
      }
    };
    const probeReadiness = async () => {
      while (hammering) {
        count(readyz, (await request(fixture.bridge.baseUrl).get('/readyz')).status);
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
    };
    const goodClient = async (client: number) => {
      for (let i = 0; i < 20; i++) {
        const body = `good ${client}.${i}`;
        const res = await request(fixture.bridge.baseUrl)
          .post(`/rpc/${echoQueue}`)
          .set('Content-Type', 'text/plain')
          .send(body);
        count(good, res.status === 200 && res.text === body ? 'answered' : `status ${res.status}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    };

    const started = Date.now();
    const hammers = [hammer(), hammer(), hammer(), probeReadiness()];
    await Promise.all(Array.from({ length: 10 }, (_, client) => goodClient(client)));
    // Keep hammering past a few check TTLs, so that cached answers expire and are asked again.
    while (Date.now() - started < 3_000) await new Promise((resolve) => setTimeout(resolve, 50));
    hammering = false;
    await Promise.all(hammers);
    const seconds = (Date.now() - started) / 1000;

    const hostileCount = Object.values(hostile).reduce((a, b) => a + b, 0);
    const probes = {
      forbidden: await fixture.bridge.metric('amqp_exchange_checks_total', { verdict: 'forbidden' }),
      exists: await fixture.bridge.metric('amqp_exchange_checks_total', { verdict: 'exists' }, { absentIsZero: true }),
    };
    const closes =
      (await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true })) - closesBefore;
    console.info(
      `exchange isolation drill (${admin.product}, ${seconds.toFixed(1)} s): hostile requests ${hostileCount} ` +
        `${JSON.stringify(hostile)}, probes ${JSON.stringify(probes)}; good requests ${JSON.stringify(good)}; ` +
        `/readyz ${JSON.stringify(readyz)}; shared channel closes ${closes}`,
    );
    expect(good).toEqual({ answered: 200 });
    expect(Object.keys(readyz)).toEqual(['200']);
    expect(closes).toBe(0);
    expect(Object.keys(hostile)).toEqual(['403']);
    expect([...hostileTypes]).toEqual([`${PROBLEM_TYPE_PREFIX}forbidden`]);
    // Repeating it does not keep costing the broker a channel: one probe per exchange per TTL (1 s).
    expect(probes.forbidden).toBeGreaterThanOrEqual(2);
    expect(probes.forbidden).toBeLessThanOrEqual(2 * (Math.ceil(seconds) + 1));
    expect(hostileCount).toBeGreaterThan(10 * probes.forbidden);
  });
});

describe('thousands of distinct exchange names', () => {
  it('are answered 404, or 503 past the bound on checks under way, never 502, and the reply channels stay open', {
    timeout: 60_000,
  }, async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 40 });
    const statuses: Tally = {};
    const retryAfter = new Set<string>();
    const prefix = uniqueName('missing');
    try {
      await Promise.all(
        Array.from({ length: 40 }, async (_, client) => {
          for (let i = 0; i < 80; i++) {
            const res = await request(fixture.bridge.baseUrl)
              .post(`/rpc/${prefix}.${client}.${i}/k`)
              .agent(agent)
              .send('x');
            count(statuses, res.status);
            if (res.status === 503) retryAfter.add(String(res.headers['retry-after']));
          }
        }),
      );
    } finally {
      agent.destroy();
    }
    console.info(
      `distinct missing exchanges (${admin.product}): 3200 requests ${JSON.stringify(statuses)}; ` +
        `probes that found them missing ${await fixture.bridge.metric('amqp_exchange_checks_total', { verdict: 'missing' })}`,
    );
    for (const status of Object.keys(statuses)) expect(['404', '503']).toContain(status);
    expect(statuses['404']).toBeGreaterThan(0);
    for (const value of retryAfter) expect(Number(value)).toBeGreaterThanOrEqual(1);
    expect(fixture.bridge.bridge.session.allChannelsOpen).toBe(true);
    expect((await request(fixture.bridge.baseUrl).get('/readyz')).status).toBe(200);
    const after = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${echoQueue}`)
      .set('Content-Type', 'text/plain')
      .send('ok');
    expect(after.status).toBe(200);
  });
});
