import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROBLEM_TYPE_PREFIX } from '../../src/errors.js';
import { readMetric } from '../helpers/bridge.js';
import { AMQP_URL, connectTestBroker, startRawWorker, type TestBroker, uniqueName } from '../helpers/broker.js';

let broker: TestBroker;

beforeAll(async () => {
  broker = await connectTestBroker();
});

afterAll(async () => {
  await broker?.close();
});

interface BridgeProcess {
  readonly child: ChildProcess;
  readonly baseUrl: string;
  readonly exited: Promise<number | null>;
  inFlight(): Promise<number>;
}

/** The real process, as `npm start` runs it (from source here), on a free port. */
async function startBridgeProcess(env: Record<string, string>): Promise<BridgeProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: { ...process.env, AMQP_URL, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the bridge process did not start listening')), 15_000);
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      const entry = JSON.parse(line) as { msg?: string; port?: number };
      if (entry.msg === 'listening' && entry.port !== undefined) {
        clearTimeout(timer);
        resolve(entry.port);
      }
    });
  });
  const baseUrl = `http://127.0.0.1:${port}`;
  for (let attempt = 0; (await request(baseUrl).get('/readyz')).status !== 200; attempt++) {
    if (attempt > 100) throw new Error('the bridge process never became ready');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    child,
    baseUrl,
    exited,
    async inFlight() {
      return readMetric((await request(baseUrl).get('/metrics')).text, 'rpc_in_flight', {});
    },
  };
}

async function until(condition: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('graceful shutdown of the real process', () => {
  it('on SIGTERM stops being ready, refuses new RPCs, lets in-flight ones finish, and exits 0', async () => {
    const queue = uniqueName('draining');
    await startRawWorker(broker, queue, (message, reply) => {
      setTimeout(() => reply(message.content, { contentType: 'text/plain' }), 700);
    });
    const bridge = await startBridgeProcess({ SHUTDOWN_GRACE_MS: '5000' });
    const inFlight = Array.from({ length: 5 }, (_, i) =>
      request(bridge.baseUrl).post(`/rpc/${queue}`).set('Content-Type', 'text/plain').send(`job-${i}`),
    );
    const answers = Promise.all(inFlight.map((req) => req.then((res) => res)));
    await until(async () => (await bridge.inFlight()) === 5, 'five RPCs in flight');

    bridge.child.kill('SIGTERM');
    await until(async () => (await request(bridge.baseUrl).get('/readyz')).status === 503, 'readyz to turn 503');
    const refused = await request(bridge.baseUrl).post(`/rpc/${queue}`).send('too late');
    expect(refused.status).toBe(503);
    expect(refused.body.type).toBe(`${PROBLEM_TYPE_PREFIX}shutting-down`);
    expect(refused.headers['retry-after']).toBe('1');

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
    const bridge = await startBridgeProcess({ SHUTDOWN_GRACE_MS: '300' });
    const inFlight = Array.from({ length: 3 }, () =>
      request(bridge.baseUrl).post(`/rpc/${queue}`).set('Amqp-Timeout', '30000').send('x'),
    );
    const answers = Promise.all(inFlight.map((req) => req.then((res) => ({ res, at: Date.now() }))));
    await until(async () => (await bridge.inFlight()) === 3, 'three RPCs in flight');

    const signalledAt = Date.now();
    bridge.child.kill('SIGTERM');
    for (const { res, at } of await answers) {
      expect(res.status).toBe(502);
      expect(res.body.type).toBe(`${PROBLEM_TYPE_PREFIX}request-lost`);
      expect(at - signalledAt).toBeLessThan(2_000);
    }
    expect(await bridge.exited).toBe(0);
  });

  it('exits at once on a second signal', async () => {
    const queue = uniqueName('stuck');
    await startRawWorker(broker, queue, () => undefined);
    const bridge = await startBridgeProcess({ SHUTDOWN_GRACE_MS: '20000' });
    const pending = request(bridge.baseUrl)
      .post(`/rpc/${queue}`)
      .send('x')
      .catch(() => undefined);
    await until(async () => (await bridge.inFlight()) === 1, 'one RPC in flight');
    bridge.child.kill('SIGTERM');
    await until(async () => (await request(bridge.baseUrl).get('/readyz')).status === 503, 'readyz to turn 503');
    const secondAt = Date.now();
    bridge.child.kill('SIGTERM');
    expect(await bridge.exited).toBe(1);
    expect(Date.now() - secondAt).toBeLessThan(1_000);
    await pending;
  });
});
