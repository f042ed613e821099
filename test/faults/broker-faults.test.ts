/**
 * Real faults, driven with the broker's own tools (rabbitmqctl or lavinmqctl, whichever broker
 * answers at AMQP_URL). Run alone (`npm run test:faults`): they close every connection on the broker,
 * stop it, and raise a memory alarm, so nothing else may run beside. A drill the broker cannot stage
 * is skipped with the reason printed.
 */
import request from 'supertest';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type RunningWorker, startEchoWorker } from '../../examples/echo-worker.js';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { startTestBridge, type TestBridge, waitFor } from '../helpers/bridge.js';
import { startBridgeProcess } from '../helpers/bridge-process.js';
import { AMQP_URL, connectTestBroker, startRawWorker, type TestBroker, uniqueName } from '../helpers/broker.js';
import { brokerAdmin, drillIt } from '../helpers/broker-admin.js';
import { secondNodeOf } from '../helpers/second-node.js';

const admin = await brokerAdmin();
const restart = 'unavailable' in admin.restart ? undefined : admin.restart;
const cannotRestart = 'unavailable' in admin.restart ? admin.restart.unavailable : undefined;
const memoryAlarm = 'unavailable' in admin.memoryAlarm ? undefined : admin.memoryAlarm;

let bridge: TestBridge;
let broker: TestBroker | undefined;
let worker: RunningWorker | undefined;
const echoQueue = uniqueName('echo');
const stuckQueue = uniqueName('stuck');

/** The arranging connection and the echo worker do not reconnect by themselves: make them anew. */
async function connectSideActors(): Promise<void> {
  await worker?.close();
  await broker?.close();
  broker = await connectTestBroker();
  await startRawWorker(broker, stuckQueue, () => undefined);
  worker = await startEchoWorker({ url: AMQP_URL, queue: echoQueue, durable: false });
}

async function echo(body: string) {
  return request(bridge.baseUrl).post(`/rpc/${echoQueue}`).set('Content-Type', 'text/plain').send(body);
}

/**
 * Puts five requests that nobody answers in flight. `answers` (wrapped, so that awaiting this does
 * not wait for them) resolves with each response and when it came.
 */
async function fiveInFlight() {
  const answers = Promise.all(
    Array.from({ length: 5 }, () =>
      request(bridge.baseUrl)
        .post(`/rpc/${stuckQueue}`)
        .set('Amqp-Timeout', '30000')
        .send('x')
        .then((res) => ({ res, at: Date.now() })),
    ),
  );
  await waitFor(() => bridge.bridge.rpc.inFlightCount === 5, 5_000, 'five requests in flight');
  return { answers };
}

function expectNothingPending(): void {
  expect(bridge.bridge.rpc.inFlightCount).toBe(0);
}

beforeAll(async () => {
  // The admin tool's first use checks which broker it drives: not inside a timed drill.
  await admin.checked();
  // A first reconnect slow enough to observe the bridge while the broker is away.
  bridge = await startTestBridge({ AMQP_RECONNECT_MIN_MS: '1500', AMQP_RECONNECT_MAX_MS: '3000' });
});

beforeEach(async () => {
  await waitFor(() => bridge.bridge.readiness().ready, 30_000, 'the bridge to be ready');
  await connectSideActors();
});

afterEach(() => {
  expectNothingPending();
});

afterAll(async () => {
  await bridge?.close();
  await worker?.close();
  await broker?.close();
});

describe('the broker closes every connection (close_all_connections)', () => {
  it('answers in-flight requests at once, refuses new ones with 503 while away, and recovers by itself', async () => {
    const { answers } = await fiveInFlight();
    const reconnectsBefore = await bridge.metric('amqp_reconnects_total');
    const faultAt = Date.now();
    await admin.closeAllConnections('fault test');

    const answered = await answers;
    for (const { res } of answered) {
      expect(res.status).toBe(502);
      expect(res.body.type).toBe(`${PROBLEM_TYPE_PREFIX}request-lost`);
    }
    const lastAnswerMs = Math.max(...answered.map(({ at }) => at)) - faultAt;
    expect(lastAnswerMs).toBeLessThan(3_000);

    const whileAway = await echo('x');
    expect(whileAway.status).toBe(503);
    expect(Number(whileAway.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect((await request(bridge.baseUrl).get('/readyz')).status).toBe(503);

    await waitFor(() => bridge.bridge.readiness().ready, 15_000, 'the bridge to reconnect');
    const recoveredMs = Date.now() - faultAt;
    expect((await request(bridge.baseUrl).get('/readyz')).status).toBe(200);
    expect(bridge.bridge.session.allChannelsOpen).toBe(true);
    expect(await bridge.metric('amqp_reconnects_total')).toBe(reconnectsBefore + 1);
    await connectSideActors();
    const after = await echo('back');
    expect(after.status).toBe(200);
    expect(after.text).toBe('back');
    console.info(
      `close_all_connections: in-flight answered ${lastAnswerMs} ms after the fault, ready again after ${recoveredMs} ms`,
    );
  });
});

describe('the broker stops and starts again', () => {
  drillIt(
    admin,
    'broker stop and start',
    cannotRestart,
  )(
    'answers in-flight requests at once, answers 503 while the broker is down, and reconnects when it is back, replies in both modes',
    async () => {
      if (restart === undefined) return;
      // The suite's bridge uses direct reply-to; this one reply queues, which die with the broker.
      const queueMode = await startTestBridge({
        RPC_REPLY_MODE: 'queue',
        AMQP_RECONNECT_MIN_MS: '1500',
        AMQP_RECONNECT_MAX_MS: '3000',
      });
      try {
        const { answers } = await fiveInFlight();
        const faultAt = Date.now();
        const stopped = restart.stop();
        try {
          const answered = await answers;
          for (const { res } of answered) expect([502, 503]).toContain(res.status);
          const lastAnswerMs = Math.max(...answered.map(({ at }) => at)) - faultAt;
          await stopped;

          const started = Date.now();
          const whileDown = await echo('x');
          expect(whileDown.status).toBe(503);
          expect(whileDown.body.type).toBe(`${PROBLEM_TYPE_PREFIX}broker-unavailable`);
          expect(Number(whileDown.headers['retry-after'])).toBeGreaterThanOrEqual(1);
          expect(Date.now() - started).toBeLessThan(200);
          expect((await request(bridge.baseUrl).get('/readyz')).status).toBe(503);
          expect(await bridge.metric('amqp_connected')).toBe(0);
          console.info(`broker stop: in-flight answered ${lastAnswerMs} ms after the fault`);
        } finally {
          await stopped.catch(() => undefined);
          await restart.start();
        }
        const backAt = Date.now();
        await waitFor(() => bridge.bridge.readiness().ready, 20_000, 'the bridge to reconnect');
        const directReadyMs = Date.now() - backAt;
        await waitFor(() => queueMode.bridge.readiness().ready, 20_000, 'the queue-mode bridge to reconnect');
        await connectSideActors();
        const after = await echo('back');
        expect(after.status).toBe(200);
        expect(after.text).toBe('back');
        const afterQueueMode = await request(queueMode.baseUrl)
          .post(`/rpc/${echoQueue}`)
          .set('Content-Type', 'text/plain')
          .send('back, queue mode');
        expect(afterQueueMode.status).toBe(200);
        expect(afterQueueMode.text).toBe('back, queue mode');
        console.info(
          `broker start: ready again ${directReadyMs} ms after the broker was back; replies in direct and queue mode`,
        );
      } finally {
        await queueMode.close();
      }
    },
  );
});

describe('a memory alarm (rabbitmqctl set_vm_memory_high_watermark)', () => {
  drillIt(
    admin,
    'memory alarm',
    'unavailable' in admin.memoryAlarm ? admin.memoryAlarm.unavailable : undefined,
  )(
    'answers 503 while the broker blocks publishers (502 for a request it already took), and serves again once the alarm clears',
    async () => {
      if (memoryAlarm === undefined) return;
      const pending = request(bridge.baseUrl).post(`/rpc/${echoQueue}`).set('Amqp-Timeout', '20000');
      const clear = await memoryAlarm.raise();
      try {
        // RabbitMQ tells a connection it is blocked when it next publishes: this request is that publish.
        // It was handed to the broker, which may still deliver it once the alarm clears: not safe to
        // retry, so 502 (a 503 with Retry-After would invite a duplicate).
        const started = Date.now();
        const first = await pending.send('first');
        expect(first.status).toBe(502);
        expect(first.body.type).toBe(`${PROBLEM_TYPE_PREFIX}request-lost`);
        expect(first.body.detail).toContain('already published');
        expect(first.headers['retry-after']).toBeUndefined();
        expect(Date.now() - started).toBeLessThan(5_000);
        await waitFor(() => bridge.bridge.session.isBlocked, 5_000, 'the connection to be blocked');
        expect(await bridge.metric('amqp_connection_blocked')).toBe(1);
        expect((await request(bridge.baseUrl).get('/readyz')).status).toBe(503);

        const whileBlocked = await echo('x');
        expect(whileBlocked.status).toBe(503);
        expect(whileBlocked.body.type).toBe(`${PROBLEM_TYPE_PREFIX}broker-unavailable`);
        expect(whileBlocked.headers['retry-after']).toBeDefined();
        expectNothingPending();
      } finally {
        await clear();
      }
      const clearedAt = Date.now();
      await waitFor(() => !bridge.bridge.session.isBlocked, 10_000, 'the connection to be unblocked');
      const unblockedMs = Date.now() - clearedAt;
      await connectSideActors();
      const after = await echo('after the alarm');
      expect(after.status).toBe(200);
      expect(after.text).toBe('after the alarm');
      console.info(
        'memory alarm: connection.blocked came after the first publish (answered 502), then 503 until it cleared; ' +
          `unblocked ${unblockedMs} ms after the watermark was restored`,
      );
    },
  );
});

describe('twenty faults in a row', () => {
  it('leave nothing pending and do not grow memory', async () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    expect(gc, 'run with --expose-gc (the faults project does)').toBeTypeOf('function');
    const heapAfterGc = () => {
      gc?.();
      return process.memoryUsage().heapUsed;
    };
    const samples: number[] = [];
    for (let fault = 1; fault <= 20; fault++) {
      const { answers } = await fiveInFlight();
      await admin.closeAllConnections(`fault ${fault}`);
      for (const { res } of await answers) expect(res.status).toBe(502);
      await waitFor(() => bridge.bridge.readiness().ready, 15_000, 'the bridge to reconnect');
      await connectSideActors();
      expect((await echo(`after fault ${fault}`)).status).toBe(200);
      expectNothingPending();
      if (fault === 5 || fault === 20) samples.push(heapAfterGc());
    }
    const [atFive, atTwenty] = samples as [number, number];
    console.info(
      `heap after GC: ${(atFive / 1e6).toFixed(1)} MB after 5 faults, ${(atTwenty / 1e6).toFixed(1)} MB after 20`,
    );
    expect(atTwenty).toBeLessThan(atFive * 1.1);
  });
});

const secondNode = secondNodeOf(admin);
const second = 'unavailable' in secondNode ? undefined : secondNode;
if ('unavailable' in secondNode) console.warn(`SKIPPED on ${admin.product}: second node: ${secondNode.unavailable}`);
const secondTls = second === undefined || 'unavailable' in second.tls ? undefined : second.tls;

describe.skipIf(second === undefined)('a second broker node', () => {
  beforeAll(async () => {
    await second?.start();
  }, 180_000);
  afterAll(async () => {
    await second?.stop();
  }, 60_000);

  drillIt(
    admin,
    'TLS to a second node',
    second !== undefined && 'unavailable' in second.tls ? second.tls.unavailable : undefined,
  )('speaks TLS: amqps:// works end to end, with the server certificate verified', async () => {
    if (second === undefined || secondTls === undefined) return;
    const queue = uniqueName('over-tls');
    const tlsWorker = await startEchoWorker({ url: secondTls.plainUrl, queue, durable: false });
    // The bridge trusts the test CA the way an operator would: NODE_EXTRA_CA_CERTS.
    const tls = await startBridgeProcess({ AMQP_URL: secondTls.url, NODE_EXTRA_CA_CERTS: secondTls.caFile() });
    try {
      const res = await request(tls.baseUrl).post(`/rpc/${queue}`).set('Content-Type', 'text/plain').send('over tls');
      expect(res.status).toBe(200);
      expect(res.text).toBe('over tls');
      // The line the untrusting bridge below must never write (so its absence there means something).
      await expect.poll(() => tls.logs.filter((line) => line.msg === 'amqp connected')).toHaveLength(1);
    } finally {
      tls.child.kill('SIGTERM');
      await tls.exited;
      await tlsWorker.close();
    }
    // Without the CA the certificate is refused: the bridge never becomes ready.
    const untrusting = await startBridgeProcess({ AMQP_URL: secondTls.url }, { waitForReady: false });
    try {
      // Not ready for a stated reason: its connection attempts fail on the certificate (in Node's words,
      // e.g. "self-signed certificate in certificate chain"), not on anything else.
      const reasons = () =>
        untrusting.logs.filter((line) => line.msg === 'amqp reconnect scheduled').map((line) => String(line.reason));
      await expect
        .poll(reasons, { timeout: 10_000 })
        .toContainEqual(
          expect.stringMatching(/^connect to amqps:\/\/guest:\*\*\*@localhost:\d+ failed: .*certificate/i),
        );
      expect(untrusting.logs.filter((line) => line.msg === 'amqp connected')).toEqual([]);
      expect((await request(untrusting.baseUrl).get('/readyz')).status).toBe(503);
    } finally {
      untrusting.child.kill('SIGKILL');
      await untrusting.exited;
    }
  });

  drillIt(
    admin,
    'failover to a second node',
    cannotRestart,
  )('takes over when the first node stops under load, with every request answered', async () => {
    if (restart === undefined || second === undefined) return;
    const secondUrl = second.url;
    // The two nodes are independent brokers: the queue and a worker exist on each.
    const secondWorker = await startEchoWorker({ url: secondUrl, queue: echoQueue, durable: false });
    // A primary and its standby: the first URL first.
    const listed = await startTestBridge({
      AMQP_URLS: `${AMQP_URL},${secondUrl}`,
      AMQP_CONNECT_ORDER: 'listed',
      AMQP_RECONNECT_MIN_MS: '200',
    });
    const statuses = new Map<string, number>();
    let running = true;
    let stoppedAt = 0;
    let firstFailureAt = 0;
    let recoveredAt = 0;
    const loop = async () => {
      while (running) {
        const res = await request(listed.baseUrl)
          .post(`/rpc/${echoQueue}`)
          .set('Content-Type', 'text/plain')
          .set('Amqp-Timeout', '5000')
          .send('x')
          .catch(() => ({ status: 'error' as const, text: '' }));
        const status = String(res.status);
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        // The first answer that is not 200 marks the first node's connection gone; the next 200 came through the second.
        if (stoppedAt > 0 && status !== '200' && firstFailureAt === 0) firstFailureAt = Date.now();
        if (firstFailureAt > 0 && status === '200' && recoveredAt === 0) recoveredAt = Date.now();
      }
    };
    try {
      const clients = Array.from({ length: 8 }, loop);
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      stoppedAt = Date.now();
      await restart.stop();
      await waitFor(() => recoveredAt > 0, 20_000, 'requests to succeed through the second node');
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      running = false;
      await Promise.all(clients);
      const counts = Object.fromEntries(statuses);
      console.info(
        `failover: first failed answer ${firstFailureAt - stoppedAt} ms after the broker stop began, ` +
          `first 200 through the second node ${recoveredAt - firstFailureAt} ms after that; statuses ${JSON.stringify(counts)}`,
      );
      // Every request got an answer, and only the documented ones: 200, or 502/503 around the switch.
      for (const status of Object.keys(counts)) expect(['200', '502', '503']).toContain(status);
      expect(counts['200']).toBeGreaterThan(0);
      expect(
        listed.logs.some(
          (line) => line.msg === 'amqp connected' && String(line.broker).includes(`:${new URL(secondUrl).port}`),
        ),
      ).toBe(true);
    } finally {
      running = false;
      await listed.close();
      await secondWorker.close();
      await restart.start();
    }
  });
});
