import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { waitFor } from '../helpers/bridge.js';
import { startBridgeProcess } from '../helpers/bridge-process.js';
import { connectTestBroker, startRawWorker, type TestBroker, uniqueName } from '../helpers/broker.js';

let broker: TestBroker;

beforeAll(async () => {
  broker = await connectTestBroker();
});

afterAll(async () => {
  await broker?.close();
});

/** The real process on a free port; killed when the test ends if it has not exited by then (a failed assertion). */
async function startBridge(env: Record<string, string>) {
  const bridge = await startBridgeProcess(env);
  onTestFinished(() => bridge.stop());
  return bridge;
}

const readyzIs503 = (baseUrl: string) => async () => (await request(baseUrl).get('/readyz')).status === 503;

describe('graceful shutdown of the real process', () => {
  it('on SIGTERM stops being ready, refuses new RPCs, lets in-flight ones finish, and exits 0', async () => {
    const queue = uniqueName('draining');
    await startRawWorker(broker, queue, (message, reply) => {
      setTimeout(() => reply(message.content, { contentType: 'text/plain' }), 700);
    });
    const bridge = await startBridge({ SHUTDOWN_GRACE_MS: '5000' });
    const inFlight = Array.from({ length: 5 }, (_, i) =>
      request(bridge.baseUrl).post(`/rpc/${queue}`).set('Content-Type', 'text/plain').send(`job-${i}`),
    );
    const answers = Promise.all(inFlight.map((req) => req.then((res) => res)));
    await waitFor(async () => (await bridge.inFlight()) === 5, 5_000, 'five RPCs in flight');

    bridge.child.kill('SIGTERM');
    await waitFor(readyzIs503(bridge.baseUrl), 5_000, 'readyz to turn 503');
    const refused = await request(bridge.baseUrl).post(`/rpc/${queue}`).send('too late');
    expect(refused.status).toBe(503);
    expect(refused.body.type).toBe(`${PROBLEM_TYPE_PREFIX}shutting-down`);
    expect(refused.headers['retry-after']).toBe('1');
    // Over a keep-alive connection (fetch keeps them), the answer still asks the client to go elsewhere.
    const keptAlive = await fetch(`${bridge.baseUrl}/rpc/${queue}`, { method: 'POST', body: 'too late' });
    expect(keptAlive.status).toBe(503);
    expect(keptAlive.headers.get('connection')).toBe('close');

    const results = await answers;
    results.forEach((res, i) => {
      expect(res.status).toBe(200);
      expect(res.text).toBe(`job-${i}`);
    });
    expect(await bridge.exited).toBe(0);
  });

  it('answers what is still in flight when the grace period ends (502), then exits 0', async () => {
    const queue = uniqueName('too-slow');
    await startRawWorker(broker, queue, () => undefined);
    const bridge = await startBridge({ SHUTDOWN_GRACE_MS: '300' });
    const inFlight = Array.from({ length: 3 }, () =>
      request(bridge.baseUrl).post(`/rpc/${queue}`).set('Amqp-Timeout', '30000').send('x'),
    );
    const answers = Promise.all(inFlight.map((req) => req.then((res) => ({ res, at: Date.now() }))));
    await waitFor(async () => (await bridge.inFlight()) === 3, 5_000, 'three RPCs in flight');

    const signalledAt = Date.now();
    bridge.child.kill('SIGTERM');
    for (const { res, at } of await answers) {
      expect(res.status).toBe(502);
      expect(res.body.type).toBe(`${PROBLEM_TYPE_PREFIX}request-lost`);
      expect(at - signalledAt).toBeLessThan(2_000);
    }
    expect(await bridge.exited).toBe(0);
  });

  it('with SHUTDOWN_DELAY_MS, reports not ready at once but serves RPCs until the delay is over', async () => {
    const queue = uniqueName('delayed');
    await startRawWorker(broker, queue, (message, reply) => reply(message.content, { contentType: 'text/plain' }));
    const silent = uniqueName('silent');
    await startRawWorker(broker, silent, () => undefined);
    const bridge = await startBridge({ SHUTDOWN_DELAY_MS: '1500', SHUTDOWN_GRACE_MS: '3000' });
    // Keeps the process draining after the delay, so that a late caller meets the refusal.
    const stuck = request(bridge.baseUrl)
      .post(`/rpc/${silent}`)
      .set('Amqp-Timeout', '2500')
      .send('x')
      .then((res) => res);
    await waitFor(async () => (await bridge.inFlight()) === 1, 5_000, 'one RPC in flight');
    const signalledAt = Date.now();
    bridge.child.kill('SIGTERM');
    await waitFor(readyzIs503(bridge.baseUrl), 5_000, 'readyz to turn 503');
    // A load balancer that has not yet seen /readyz turn still sends; those callers are served.
    const during = await request(bridge.baseUrl)
      .post(`/rpc/${queue}`)
      .set('Content-Type', 'text/plain')
      .send('still here');
    expect(Date.now() - signalledAt).toBeLessThan(1_500);
    expect(during.status).toBe(200);
    expect(during.text).toBe('still here');
    await new Promise((resolve) => setTimeout(resolve, 1_700 - (Date.now() - signalledAt)));
    const after = await request(bridge.baseUrl).post(`/rpc/${queue}`).send('too late');
    expect(after.status).toBe(503);
    expect(after.body.type).toBe(`${PROBLEM_TYPE_PREFIX}shutting-down`);
    expect((await stuck).status).toBe(504);
    expect(await bridge.exited).toBe(0);
  });

  it('exits at once on a second signal', async () => {
    const queue = uniqueName('stuck');
    await startRawWorker(broker, queue, () => undefined);
    const bridge = await startBridge({ SHUTDOWN_GRACE_MS: '20000' });
    const pending = request(bridge.baseUrl)
      .post(`/rpc/${queue}`)
      .send('x')
      .catch(() => undefined);
    await waitFor(async () => (await bridge.inFlight()) === 1, 5_000, 'one RPC in flight');
    bridge.child.kill('SIGTERM');
    await waitFor(readyzIs503(bridge.baseUrl), 5_000, 'readyz to turn 503');
    const secondAt = Date.now();
    bridge.child.kill('SIGTERM');
    expect(await bridge.exited).toBe(1);
    expect(Date.now() - secondAt).toBeLessThan(1_000);
    await pending;
  });
});
