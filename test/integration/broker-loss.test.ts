import request from 'supertest';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { startEchoWorker } from '../../examples/echo-worker.js';
import { redactUrl } from '../../src/config/redact.js';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { startTestBridge, waitFor } from '../helpers/bridge.js';
import { AMQP_URL, startRawWorker, uniqueName } from '../helpers/broker.js';
import { brokerAdmin } from '../helpers/broker-admin.js';
import { allStarted, useEchoBridge } from '../helpers/fixture.js';

const admin = await brokerAdmin();
const appId = uniqueName('loss');
const stuckQueue = uniqueName('stuck');
// A slow first reconnect leaves a window in which to see how the bridge answers while down.
const fixture = useEchoBridge({ APP_ID: appId, AMQP_RECONNECT_MIN_MS: '3000', AMQP_RECONNECT_MAX_MS: '3000' });
const { echoQueue } = fixture;

beforeAll(async () => {
  // Takes requests and never answers: they stay pending until something else settles them.
  await startRawWorker(fixture.broker, stuckQueue, () => undefined);
});

describe('when the broker closes the bridge connection', () => {
  it('answers pending requests at once, refuses new ones with 503, reconnects by itself and serves again', async () => {
    const pending = Array.from({ length: 5 }, () =>
      request(fixture.bridge.baseUrl).post(`/rpc/${stuckQueue}`).set('Amqp-Timeout', '20000').send('wait'),
    );
    const answered = Promise.all(pending.map((req) => req.then((res) => ({ res, at: Date.now() }))));
    await waitFor(() => fixture.bridge.bridge.rpc.inFlightCount === 5, 5_000, 'five requests in flight');

    const closed = await admin.closeConnectionsNamed(appId, 'test: broker-side close');
    const faultAt = Date.now();
    expect(closed).toBe(1);

    const results = await answered;
    for (const { res, at } of results) {
      expect(res.status).toBe(502);
      expect(res.body.type).toBe(`${PROBLEM_TYPE_PREFIX}request-lost`);
      expect(at - faultAt).toBeLessThan(1_000);
    }
    expect(fixture.bridge.bridge.rpc.inFlightCount).toBe(0);

    const whileDown = await request(fixture.bridge.baseUrl).post(`/rpc/${echoQueue}`).send('x');
    expect(whileDown.status).toBe(503);
    expect(Number(whileDown.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect((await request(fixture.bridge.baseUrl).get('/readyz')).status).toBe(503);
    expect(await fixture.bridge.metric('amqp_connected')).toBe(0);

    await waitFor(() => fixture.bridge.bridge.readiness().ready, 10_000, 'the bridge to reconnect');
    expect((await request(fixture.bridge.baseUrl).get('/readyz')).status).toBe(200);
    expect(await fixture.bridge.metric('amqp_reconnects_total')).toBe(1);
    expect(await fixture.bridge.metric('amqp_connected')).toBe(1);

    const after = await request(fixture.bridge.baseUrl)
      .post(`/rpc/${echoQueue}`)
      .set('Content-Type', 'text/plain')
      .send('back');
    expect(after.status).toBe(200);
    expect(after.text).toBe('back');
  });
});

describe('when the broker closes one reply channel', () => {
  it('answers the requests on it at once, reopens it with its reply consumer, and serves again', async () => {
    // The one real way a reply channel dies under a live connection here: an exchange deleted after
    // the bridge checked it (the check is cached), so the publish makes the broker close the channel.
    const exchange = uniqueName('vanishing');
    const queue = uniqueName('behind');
    const { broker } = fixture;
    await broker.channel.assertExchange(exchange, 'direct', { durable: false });
    // The test deletes it itself; this is for a test that fails before it does.
    onTestFinished(async () => {
      await broker.channel.deleteExchange(exchange).catch(() => undefined);
    });
    const behind = await startEchoWorker({ url: AMQP_URL, queue, durable: false });
    try {
      await broker.channel.bindQueue(queue, exchange, 'k');
      const first = await request(fixture.bridge.baseUrl).post(`/rpc/${exchange}/k`).send('x');
      expect(first.status).toBe(200);
      const closesBefore = await fixture.bridge.metric(
        'amqp_channel_closes_total',
        { reason: '404' },
        { absentIsZero: true },
      );

      await broker.channel.deleteExchange(exchange);
      const started = Date.now();
      const lost = await request(fixture.bridge.baseUrl)
        .post(`/rpc/${exchange}/k`)
        .set('Amqp-Timeout', '10000')
        .send('x');
      expect(lost.status).toBe(502);
      expect(lost.body.type).toBe(`${PROBLEM_TYPE_PREFIX}request-lost`);
      expect(lost.body.detail).toContain('NOT_FOUND');
      expect(Date.now() - started).toBeLessThan(1_000);
      expect(await fixture.bridge.metric('amqp_channel_closes_total', { reason: '404' })).toBe(closesBefore + 1);

      await waitFor(() => fixture.bridge.bridge.session.allChannelsOpen, 5_000, 'the reply channel to be reopened');
      for (let i = 0; i < 8; i++) {
        const res = await request(fixture.bridge.baseUrl)
          .post(`/rpc/${echoQueue}`)
          .set('Content-Type', 'text/plain')
          .send(`${i}`);
        expect(res.status).toBe(200);
        expect(res.text).toBe(`${i}`);
      }
    } finally {
      await behind.close();
    }
  });
});

describe('with several broker URLs', () => {
  it('moves on to the next URL when one is unreachable, at start and after a connection loss', async () => {
    const marker = uniqueName('failover');
    const dead = 'amqp://guest:guest@127.0.0.1:1';
    const listed = await startTestBridge({
      APP_ID: marker,
      AMQP_URL: `${dead},${AMQP_URL}`,
      AMQP_CONNECT_ORDER: 'listed',
    });
    try {
      // Ready at all means the dead first URL was passed over.
      const first = await request(listed.baseUrl).post(`/rpc/${echoQueue}`).set('Content-Type', 'text/plain').send('1');
      expect(first.status).toBe(200);
      expect(await admin.closeConnectionsNamed(marker, 'test: failover')).toBe(1);
      // The log, not readiness, shows the loss: the bridge can be back before the admin tool has exited.
      const lostAt = () => listed.logs.findIndex((line) => String(line.reason ?? '').startsWith('connection lost'));
      await waitFor(() => lostAt() >= 0, 5_000, 'the connection loss to be seen');
      await waitFor(
        () => listed.logs.slice(lostAt()).some((line) => line.msg === 'amqp connected'),
        15_000,
        'the bridge to come back through the list',
      );
      // Next in turn after the loss was the dead URL, then the live one again.
      const sinceLoss = listed.logs.slice(lostAt()).map((line) => `${String(line.msg)}: ${String(line.reason ?? '')}`);
      const deadTried = sinceLoss.findIndex((line) => line.includes('connect to amqp://guest:***@127.0.0.1:1 failed'));
      const connected = sinceLoss.findIndex((line) => line.startsWith('amqp connected'));
      expect(deadTried, sinceLoss.join('\n')).toBeGreaterThan(0);
      expect(connected).toBeGreaterThan(deadTried);
      await waitFor(() => listed.bridge.readiness().ready, 5_000, 'the bridge to be ready again');
      const after = await request(listed.baseUrl).post(`/rpc/${echoQueue}`).set('Content-Type', 'text/plain').send('2');
      expect(after.status).toBe(200);
    } finally {
      await listed.close();
    }
  });
});

describe('a virtual host in the URL', () => {
  it('connects to that vhost and routes only there', async () => {
    const vhost = uniqueName('vhost');
    await admin.addVhost(vhost);
    onTestFinished(() => admin.deleteVhost(vhost));
    const url = new URL(AMQP_URL);
    url.pathname = `/${encodeURIComponent(vhost)}`;
    const queue = uniqueName('in-vhost');
    const inVhost = await startEchoWorker({ url: url.toString(), queue, durable: false });
    onTestFinished(() => inVhost.close());
    const scoped = await startTestBridge({ AMQP_URL: url.toString() });
    try {
      const there = await request(scoped.baseUrl).post(`/rpc/${queue}`).set('Content-Type', 'text/plain').send('vh');
      expect(there.status).toBe(200);
      expect(there.text).toBe('vh');
      // The default vhost has no such queue: the other bridge's publish is returned.
      const elsewhere = await request(fixture.bridge.baseUrl).post(`/rpc/${queue}`).send('vh');
      expect(elsewhere.status).toBe(404);
    } finally {
      await scoped.close();
    }
  });
});

describe('replicas given the same list of nodes', () => {
  it('start at random places in it (AMQP_CONNECT_ORDER=random, the default), not all on the first', async () => {
    // Three spellings of the one broker here stand for three cluster nodes.
    const nodes = [AMQP_URL, `${AMQP_URL}?frameMax=131072`, `${AMQP_URL}?channelMax=2047`];
    const replicas = await allStarted(
      Array.from({ length: 9 }, () => startTestBridge({ AMQP_URLS: nodes.join(','), AMQP_CHANNELS: '1' })),
      (replica) => replica.close(),
    );
    try {
      const landed = replicas.map((replica) => {
        const line = replica.logs.find((entry) => entry.msg === 'amqp connected');
        return nodes.findIndex((node) => String(line?.broker) === redactUrl(node));
      });
      console.info(`nine replicas started on nodes ${landed.join(',')}`);
      expect(landed.every((node) => node >= 0)).toBe(true);
      // All nine on one node by chance: 3 in 19,683.
      expect(new Set(landed).size).toBeGreaterThan(1);
    } finally {
      await Promise.all(replicas.map((replica) => replica.close()));
    }
  });
});
