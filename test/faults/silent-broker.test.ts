/**
 * A broker that goes silent: a network partition or a dead host closes nothing, packets just stop.
 * A TCP proxy between the bridge and the broker stops forwarding without closing anything.
 */
import { readFile } from 'node:fs/promises';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningWorker, startEchoWorker } from '../../examples/echo-worker.js';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { startTestBridge, type TestBridge, waitFor } from '../helpers/bridge.js';
import { startBridgeProcess } from '../helpers/bridge-process.js';
import { AMQP_URL, uniqueName } from '../helpers/broker.js';
import { readMetric } from '../helpers/metric-text.js';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js';

const echoQueue = uniqueName('echo');
let worker: RunningWorker;

beforeAll(async () => {
  // The worker talks to the broker directly: only the bridge's path goes silent.
  worker = await startEchoWorker({ url: AMQP_URL, queue: echoQueue, durable: false });
});

afterAll(async () => {
  await worker?.close();
});

type Tally = Record<string, number>;
const count = (tally: Tally, key: string | number) => {
  tally[key] = (tally[key] ?? 0) + 1;
};

describe('a broker that goes silent under steady load', () => {
  let proxy: TcpProxy;
  let bridge: TestBridge;

  beforeAll(async () => {
    proxy = await startTcpProxy(Number(new URL(AMQP_URL).port || 5672));
    // Default heartbeat settings: the bound the README documents.
    bridge = await startTestBridge({ AMQP_URL: proxy.via(AMQP_URL), AMQP_RECONNECT_MAX_MS: '2000' });
  });

  afterAll(async () => {
    await bridge?.close();
    await proxy?.close();
  });

  it('is detected within the heartbeat bound: in-flight calls 502, new ones 503 with Retry-After, and it reconnects by itself when the path heals', async () => {
    const before: Tally = {};
    const during: Tally = {};
    const after: Tally = {};
    const retryAfter = new Set<string>();
    let phase: Tally = before;
    let running = true;
    let silencedAt = 0;
    const client = async () => {
      while (running) {
        const tally = phase;
        const res = await request(bridge.baseUrl)
          .post(`/rpc/${echoQueue}`)
          .set('Content-Type', 'text/plain')
          .set('Amqp-Timeout', '30000')
          .send('x')
          .catch(() => ({ status: 'error', headers: {} as Record<string, string>, body: {} }));
        count(tally, res.status);
        if (res.status === 503) retryAfter.add(String(res.headers['retry-after']));
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    };
    const clients = Array.from({ length: 4 }, client);
    await new Promise((resolve) => setTimeout(resolve, 1_000));

    phase = during;
    silencedAt = Date.now();
    proxy.silence();
    await waitFor(() => !bridge.bridge.session.isConnected, 20_000, 'the silent broker to be detected');
    const detectedMs = Date.now() - silencedAt;
    // After detection, every new call is refused at once while the path stays dead.
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    const refused = await request(bridge.baseUrl).post(`/rpc/${echoQueue}`).send('x');
    expect(refused.status).toBe(503);
    expect(refused.body.type).toBe(`${PROBLEM_TYPE_PREFIX}broker-unavailable`);

    phase = after;
    const healedAt = Date.now();
    proxy.heal();
    await waitFor(() => bridge.bridge.readiness().ready, 20_000, 'the bridge to reconnect');
    const reconnectedMs = Date.now() - healedAt;
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    running = false;
    await Promise.all(clients);

    console.info(
      `silent broker: detected ${detectedMs} ms after the path went silent; answers before ${JSON.stringify(before)}, ` +
        `while silent ${JSON.stringify(during)} (Retry-After ${[...retryAfter].join(',')} s), after healing ` +
        `${JSON.stringify(after)}; ready again ${reconnectedMs} ms after the path healed`,
    );
    expect(detectedMs).toBeLessThanOrEqual(15_500);
    // Sent before the silence: answered, or lost if still in flight when it began (one per client at most).
    for (const status of Object.keys(before)) expect(['200', '502']).toContain(status);
    expect(before[502] ?? 0).toBeLessThanOrEqual(4);
    // In flight when the broker went silent: lost (502); sent after it was detected: refused (503).
    for (const status of Object.keys(during)) expect(['200', '502', '503']).toContain(status);
    expect(during[502]).toBeGreaterThan(0);
    expect(during[503]).toBeGreaterThan(0);
    for (const value of retryAfter) expect(Number(value)).toBeGreaterThanOrEqual(1);
    expect(after[200]).toBeGreaterThan(0);
    expect(bridge.bridge.rpc.inFlightCount).toBe(0);
  });
});

describe('a stalled broker socket', () => {
  let proxy: TcpProxy;
  let bridge: TestBridge;

  beforeAll(async () => {
    proxy = await startTcpProxy(Number(new URL(AMQP_URL).port || 5672));
    // No heartbeat: the connection stays "up" while nothing moves, the worst case for memory.
    const url = new URL(proxy.via(AMQP_URL));
    url.searchParams.set('heartbeat', '0');
    bridge = await startTestBridge({ AMQP_URL: url.toString() });
  });

  afterAll(async () => {
    proxy?.heal();
    await bridge?.close();
    await proxy?.close();
  });

  it('does not hold the bodies of calls that timed out waiting for it to drain', async () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    expect(gc, 'run with --expose-gc (the faults project does)').toBeTypeOf('function');
    const buffersAfterGc = () => {
      gc?.();
      gc?.();
      return process.memoryUsage().arrayBuffers;
    };
    proxy.silence();
    const body = Buffer.alloc(64 * 1024, 1);
    const statuses: Tally = {};
    let slowest = 0;
    let sent = 0;
    let running = true;
    const client = async () => {
      while (running) {
        const started = Date.now();
        const res = await request(bridge.baseUrl).post(`/rpc/${echoQueue}`).set('Amqp-Timeout', '200').send(body);
        slowest = Math.max(slowest, Date.now() - started);
        sent += 1;
        count(statuses, res.status);
      }
    };
    const clients = Array.from({ length: 32 }, client);
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    const warm = buffersAfterGc();
    const sentAtWarm = sent;
    await new Promise((resolve) => setTimeout(resolve, 6_000));
    const end = buffersAfterGc();
    running = false;
    await Promise.all(clients);
    const growthMb = (end - warm) / 1e6;
    const bodiesMb = ((sent - sentAtWarm) * body.length) / 1e6;
    console.info(
      `stalled socket: ${sent} requests of 64 KiB, statuses ${JSON.stringify(statuses)}, slowest answer ${slowest} ms; ` +
        `buffers after GC ${(warm / 1e6).toFixed(1)} MB after warm-up, ${(end / 1e6).toFixed(1)} MB at the end ` +
        `(+${growthMb.toFixed(1)} MB while ${bodiesMb.toFixed(0)} MB of bodies came in)`,
    );
    // Every call is answered in its time (504), none hangs, and what they carried is let go.
    expect(Object.keys(statuses)).toEqual(['504']);
    expect(slowest).toBeLessThan(2_000);
    expect(bodiesMb).toBeGreaterThan(40);
    expect(growthMb).toBeLessThan(8);
  });
});

describe('a stdout that stops reading (a stuck log collector)', () => {
  it('holds at most LOG_MAX_BUFFER_BYTES of log lines, drops and counts the rest, and keeps answering', {
    timeout: 60_000,
  }, async () => {
    const bridge = await startBridgeProcess({ LOG_MAX_BUFFER_BYTES: String(1024 * 1024) });
    const rssMb = async () => {
      const status = await readFile(`/proc/${bridge.child.pid}/status`, 'utf8');
      return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
    };
    // Every access log line carries the user agent: 8 KiB of it makes each line ~8.5 KB.
    const userAgent = `stuck-collector-drill/${'x'.repeat(8 * 1024)}`;
    const statuses: Tally = {};
    let running = true;
    let sent = 0;
    const client = async () => {
      while (running) {
        const res = await request(bridge.baseUrl)
          .post(`/rpc/${echoQueue}`)
          .set('User-Agent', userAgent)
          .set('Content-Type', 'text/plain')
          .send('x');
        count(statuses, res.status);
        sent += 1;
      }
    };
    try {
      bridge.child.stdout?.pause();
      const clients = Array.from({ length: 16 }, client);
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      const warm = await rssMb();
      const sentAtWarm = sent;
      await new Promise((resolve) => setTimeout(resolve, 12_000));
      const end = await rssMb();
      running = false;
      await Promise.all(clients);
      const metrics = await request(bridge.baseUrl).get('/metrics');
      const droppedMb = readMetric(metrics.text, 'log_bytes_dropped_total', {}) / 1e6;
      const loggedMb = (sent * userAgent.length) / 1e6;
      const loggedSinceWarmMb = ((sent - sentAtWarm) * userAgent.length) / 1e6;
      console.info(
        `stuck stdout: ${sent} requests ${JSON.stringify(statuses)}; ~${loggedMb.toFixed(0)} MB of log lines, ` +
          `${droppedMb.toFixed(1)} MB dropped; bridge RSS ${warm.toFixed(0)} MB after warm-up, ${end.toFixed(0)} MB at ` +
          `the end while ~${loggedSinceWarmMb.toFixed(0)} MB of lines were written`,
      );
      expect(Object.keys(statuses)).toEqual(['200']);
      expect(loggedMb).toBeGreaterThan(25);
      // Everything past the bound (1 MiB) and what the pipe itself holds was let go, not kept.
      expect(droppedMb).toBeGreaterThan(loggedMb - 4);
      // Held, the lines would have grown the process by at least their own size.
      expect(end - warm).toBeLessThan(loggedSinceWarmMb);
      // Stopped the moment the collector reads again, with the held lines still on their way: what
      // reaches it is whole lines, however many were dropped. (Written out beside the write under way,
      // they came cut and joined: in CI once, and in 2 of 6 stops on a busy machine.)
      bridge.child.stdout?.resume();
      bridge.child.kill('SIGTERM');
      expect(await bridge.exited).toBe(0);
      await bridge.outputRead;
      const cut = bridge.malformedLines.map((line) => `${line.slice(0, 60)}…${line.slice(-60)} (${line.length} chars)`);
      console.info(`after the stop: ${bridge.logs.length} whole lines, ${cut.length} cut`);
      expect(cut).toEqual([]);
    } finally {
      running = false;
      bridge.child.stdout?.resume();
      await bridge.stop();
    }
  });
});
