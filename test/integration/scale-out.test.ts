import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningWorker, startEchoWorker } from '../../examples/echo-worker.js';
import { type BridgeProcess, startBridgeProcess } from '../helpers/bridge-process.js';
import { AMQP_URL, uniqueName } from '../helpers/broker.js';
import { allStarted } from '../helpers/fixture.js';

const queue = uniqueName('shared');
const workers: RunningWorker[] = [];
let first: BridgeProcess;
let second: BridgeProcess;

beforeAll(async () => {
  // Two workers on one queue and two bridge processes on one broker, as two replicas would run.
  workers.push(await startEchoWorker({ url: AMQP_URL, queue, durable: false }));
  workers.push(await startEchoWorker({ url: AMQP_URL, queue, durable: false }));
  [first, second] = await allStarted([startBridgeProcess({}), startBridgeProcess({})], (bridge) => bridge.stop());
});

afterAll(async () => {
  await Promise.all([first, second].map((bridge) => bridge?.stop()));
  await Promise.all(workers.map((worker) => worker.close()));
});

interface Outcome {
  readonly via: 'first' | 'second';
  readonly sent: string;
  readonly status: number | 'error';
  readonly body: string;
}

/** One request with a unique body through the given bridge; the echo must come back unchanged. */
function call(bridge: BridgeProcess, via: Outcome['via'], sent: string, delayMs: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const req = httpRequest(
      `${bridge.baseUrl}/rpc/${queue}`,
      { method: 'POST', headers: { 'Content-Type': 'text/plain', 'Amqp-Header-Delay-Ms': String(delayMs) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () =>
          resolve({ via, sent, status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }),
        );
        res.on('error', () => resolve({ via, sent, status: 'error', body: '' }));
      },
    );
    req.on('error', () => resolve({ via, sent, status: 'error', body: '' }));
    req.end(sent);
  });
}

describe('two bridges and two workers on one broker', () => {
  it('give every response to its own request under mixed concurrent load', async () => {
    const outcomes = await Promise.all(
      Array.from({ length: 400 }, (_, i) =>
        i % 2 === 0 ? call(first, 'first', `first-${i}`, i % 7) : call(second, 'second', `second-${i}`, i % 5),
      ),
    );
    for (const outcome of outcomes) {
      expect(outcome.status).toBe(200);
      expect(outcome.body).toBe(outcome.sent);
    }
  });

  it('lose only the killed bridge’s in-flight requests when one dies mid-load', async () => {
    // Slow enough that many are in flight on both when the first bridge is killed.
    const load = Array.from({ length: 200 }, (_, i) =>
      i % 2 === 0 ? call(first, 'first', `first-${i}`, 300) : call(second, 'second', `second-${i}`, 300),
    );
    await new Promise((resolve) => setTimeout(resolve, 150));
    first.child.kill('SIGKILL');
    const outcomes = await Promise.all(load);
    const fromSecond = outcomes.filter((outcome) => outcome.via === 'second');
    const fromFirst = outcomes.filter((outcome) => outcome.via === 'first');
    for (const outcome of fromSecond) {
      expect(outcome.status).toBe(200);
      expect(outcome.body).toBe(outcome.sent);
    }
    // The killed one's callers see their connection fail; none gets somebody else's reply.
    expect(fromFirst.filter((outcome) => outcome.status === 'error').length).toBeGreaterThan(0);
    for (const outcome of fromFirst.filter((one) => one.status === 200)) expect(outcome.body).toBe(outcome.sent);
    console.info(
      `kill mid-load: second bridge ${fromSecond.length}/${fromSecond.length} answered 200; ` +
        `first bridge ${fromFirst.filter((one) => one.status === 'error').length} of ${fromFirst.length} lost with it`,
    );
  });
});
