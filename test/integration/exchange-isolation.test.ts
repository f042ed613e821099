/**
 * No caller can make the broker close a channel other callers share. A publish the broker refuses
 * (an internal exchange, one the bridge's broker user may not write to, a missing one) closes the
 * channel it came on, so the first request to an exchange goes on a probe channel of its own.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Agent } from 'node:http';
import { promisify } from 'node:util';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { startTestBridge } from '../helpers/bridge.js';
import { AMQP_URL, uniqueName } from '../helpers/broker.js';
import { brokerAdmin, drillIt } from '../helpers/broker-admin.js';
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

describe('exchange names too long for the broker to quote in a refusal', () => {
  // RabbitMQ 4 cuts a refusal's text by characters (so only a non-ASCII one overflows), LavinMQ does not
  // cut it (and refuses non-ASCII exchange names outright): either way one over 255 bytes closes the
  // whole connection (541 INTERNAL_ERROR), and every call on it, instead of the probe's channel.
  const letter = admin.product === 'lavinmq' ? 'x' : 'é';
  const letterBytes = Buffer.byteLength(letter);
  // RabbitMQ's longest refusal of a publish quotes the routing key, exchange, vhost and user around 88 bytes of text.
  const budget = 255 - 88 - 1 - Buffer.byteLength(user);
  const named = (bytes: number, prefix = '') =>
    prefix + letter.repeat(Math.floor((bytes - prefix.length) / letterBytes));
  const longDenied = named(200, 'test.denied.');

  beforeAll(async () => {
    await fixture.broker.channel.assertExchange(longDenied, 'fanout', { durable: false });
  });
  afterAll(async () => {
    await fixture.broker.channel.deleteExchange(longDenied).catch(() => undefined);
  });

  it('are refused 400 before anything reaches the broker, and the connection and its channels stay', async () => {
    const warningsBefore = fixture.bridge.logs.length;
    const post = (exchange: string, key = 'k') =>
      request(fixture.bridge.baseUrl)
        .post(`/rpc/${encodeURIComponent(exchange)}/${encodeURIComponent(key)}`)
        .send('x');
    // The attacks: a missing exchange ("no exchange '…'"), one the bridge's user may not write to
    // ("write access to exchange '…' refused for user '…'"), and a short exchange with a long routing key
    // (topic permissions quote it: "write access to topic '…'").
    const missing = await post(named(230));
    const denied = await post(longDenied);
    const longKey = await post('amq.topic', named(200));
    for (const res of [missing, denied, longKey]) {
      expect([res.status, res.body.type]).toEqual([400, `${PROBLEM_TYPE_PREFIX}invalid-request`]);
      expect(res.body.detail).toContain(`at most ${budget} bytes`);
    }
    // One byte inside the budget is still the broker's to answer.
    const inside = named(budget - 1);
    expect(Buffer.byteLength(inside) + 1).toBeLessThanOrEqual(budget);
    expect((await post(inside)).status).toBe(404);

    const trouble = fixture.bridge.logs
      .slice(warningsBefore)
      .filter((line) => typeof line.level === 'number' && line.level >= 40 && line.msg !== 'request completed');
    expect(trouble.map((line) => line.msg)).toEqual([]);
    expect(fixture.bridge.bridge.session.isReady).toBe(true);
    const after = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${echoQueue}`)
      .set('Content-Type', 'text/plain')
      .send('ok');
    expect([after.status, after.text]).toEqual([200, 'ok']);
  });
});

describe("RabbitMQ's topic permissions (EXCHANGE_CHECK_BY_ROUTING_KEY)", () => {
  const topic = uniqueName('topic');
  const ctl = (...args: string[]) =>
    promisify(execFile)(admin.ctlCommand[0] ?? '', [...admin.ctlCommand.slice(1), ...args]);

  drillIt(
    admin,
    'topic permissions',
    admin.product === 'rabbitmq' ? undefined : 'LavinMQ has no topic permissions',
  )(
    'refuses a key the user may not write 403 on a probe of its own, though another key of the exchange passed',
    async () => {
      await fixture.broker.channel.assertExchange(topic, 'topic', { durable: false });
      await ctl('set_topic_permissions', user, topic, '^ok\\.', '.*');
      const bridge = await startTestBridge({ AMQP_URL: url.toString(), EXCHANGE_CHECK_BY_ROUTING_KEY: 'true' });
      try {
        const post = (key: string) => request(bridge.baseUrl).post(`/rpc/${topic}/${key}`).send('x');
        // Nothing is bound: a key the user may write is taken by the exchange and returned unroutable.
        expect((await post('ok.1')).status).toBe(404);
        // The attack: the exchange has passed, the next key is one its topic permission refuses.
        const refused = [await post('bad.1'), await post('bad.1')];
        expect(refused.map((res) => [res.status, res.body.type])).toEqual([
          [403, `${PROBLEM_TYPE_PREFIX}forbidden`],
          [403, `${PROBLEM_TYPE_PREFIX}forbidden`],
        ]);
        expect((await post('ok.2')).status).toBe(404);
        expect(await bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true })).toBe(0);
        // Each key asked once: ok.1, bad.1 (the second bad.1 is the cached answer), ok.2.
        expect(await bridge.metric('amqp_exchange_checks_total', {})).toBe(3);
      } finally {
        await bridge.close();
        await fixture.broker.channel.deleteExchange(topic).catch(() => undefined);
      }
    },
  );
});
