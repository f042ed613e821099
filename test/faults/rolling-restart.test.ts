/**
 * A rolling restart behind a real load balancer: two bridges behind HAProxy (deploy/haproxy.cfg,
 * as the README tells a user to run it), steady load, each bridge restarted in turn. No caller may
 * see anything but 200.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { Agent } from 'node:http';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningWorker, startEchoWorker } from '../../examples/echo-worker.js';
import { type BridgeProcess, startBridgeProcess } from '../helpers/bridge-process.js';
import { AMQP_URL, uniqueName } from '../helpers/broker.js';
import { freePort } from '../helpers/ports.js';

const HAPROXY_CONFIG = resolve(dirname(fileURLToPath(import.meta.url)), '../../deploy/haproxy.cfg');
/** Above what HAProxy's health check needs to see /readyz turn (inter 500 ms x fall 1). */
const SHUTDOWN_DELAY_MS = '2000';

const echoQueue = uniqueName('echo');
let worker: RunningWorker;
let haproxy: ChildProcess | undefined;

beforeAll(async () => {
  const version = spawnSync('haproxy', ['-v'], { encoding: 'utf8' });
  if (version.error !== undefined) {
    throw new Error("haproxy is not installed: Debian's `haproxy` package (`apt-get install -y haproxy`) gives it");
  }
  worker = await startEchoWorker({ url: AMQP_URL, queue: echoQueue, durable: false, prefetch: 64 });
});

afterAll(async () => {
  haproxy?.kill('SIGKILL');
  await worker?.close();
});

type Tally = Record<string, number>;

describe('a rolling restart of two bridges behind HAProxy under steady load', () => {
  it('fails no request', { timeout: 120_000 }, async () => {
    const ports = [await freePort(), await freePort()];
    const start = (port: number) =>
      startBridgeProcess({ PORT: String(port), SHUTDOWN_DELAY_MS }, { waitForReady: true });
    const bridges: BridgeProcess[] = [];
    for (const port of ports) bridges.push(await start(port));
    const listen = await freePort();
    haproxy = spawn('haproxy', ['-f', HAPROXY_CONFIG, '-db'], {
      env: {
        ...process.env,
        LISTEN: `127.0.0.1:${listen}`,
        BRIDGE_1: `127.0.0.1:${ports[0]}`,
        BRIDGE_2: `127.0.0.1:${ports[1]}`,
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const front = `http://127.0.0.1:${listen}`;
    const agent = new Agent({ keepAlive: true, maxSockets: 16 });
    const healthy = async () =>
      (
        await request(front)
          .get('/readyz')
          .agent(agent)
          .catch(() => undefined)
      )?.status;
    for (let tries = 0; (await healthy()) !== 200; tries++) {
      if (tries > 100) throw new Error('HAProxy never served /readyz');
      await new Promise((done) => setTimeout(done, 100));
    }

    const statuses: Tally = {};
    const failures: string[] = [];
    let running = true;
    const client = async (id: number) => {
      for (let i = 0; running; i++) {
        const body = `${id}.${i}`;
        const res = await request(front)
          .post(`/rpc/${echoQueue}`)
          .agent(agent)
          .set('Content-Type', 'text/plain')
          .send(body)
          .catch((err: Error) => ({ status: `error ${err.message}`, text: '' }));
        const status = String(res.status);
        statuses[status] = (statuses[status] ?? 0) + 1;
        if (status !== '200' || res.text !== body) failures.push(`${status} ${res.text.slice(0, 200)}`);
        // ~25 requests a second per client: a few hundred a second in all.
        await new Promise((done) => setTimeout(done, 40));
      }
    };
    const started = Date.now();
    const clients = Array.from({ length: 16 }, (_, id) => client(id));
    const restarts: string[] = [];
    try {
      await new Promise((done) => setTimeout(done, 1_500));
      for (const [index, port] of ports.entries()) {
        const old = bridges[index] as BridgeProcess;
        const signalledAt = Date.now();
        old.child.kill('SIGTERM');
        const code = await old.exited;
        const exitedMs = Date.now() - signalledAt;
        bridges[index] = await start(port);
        // HAProxy takes it back after two good checks (rise 2).
        await new Promise((done) => setTimeout(done, 1_500));
        restarts.push(
          `bridge ${index + 1}: exit ${code} ${exitedMs} ms after SIGTERM, back ${Date.now() - signalledAt} ms after it`,
        );
      }
      await new Promise((done) => setTimeout(done, 1_000));
    } finally {
      running = false;
      await Promise.all(clients);
      agent.destroy();
      for (const bridge of bridges) bridge.child.kill('SIGTERM');
      await Promise.all(bridges.map((bridge) => bridge.exited));
      haproxy.kill('SIGTERM');
    }
    const seconds = (Date.now() - started) / 1000;
    const total = Object.values(statuses).reduce((a, b) => a + b, 0);
    console.info(
      `rolling restart: ${total} requests in ${seconds.toFixed(1)} s (${(total / seconds).toFixed(0)}/s), ` +
        `statuses ${JSON.stringify(statuses)}; ${restarts.join('; ')}`,
    );
    expect(failures.slice(0, 5)).toEqual([]);
    expect(Object.keys(statuses)).toEqual(['200']);
    expect(total / seconds).toBeGreaterThan(100);
  });
});
