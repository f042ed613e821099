/**
 * npm run bench:stream: what relaying a stream costs the bridge. The built bridge and the example
 * streaming worker (examples/streaming-worker.ts with INTERVAL_MS=0: every piece at once) on AMQP_URL;
 * STREAM_CONCURRENCIES (default 1,64) callers each open one stream after another for BENCH_SECONDS
 * (default 5), each stream STREAM_PIECES (default 1000) one-word parts and a final reply, read as fast
 * as they come. BENCH_ROUNDS (3) rounds; prints events/s and the bridge process's CPU per event.
 * BRIDGE_MAIN (default dist/src/main.js) runs another build's bridge, e.g. one checked out to compare.
 *
 * STREAM_DRILL=slow-reader instead runs the slow-reader drill: one caller reads one event, then stops
 * reading for 5 s while the sample echo worker (its streaming mode) sends STREAM_PIECES parts of 64 KiB;
 * it prints the bridge's RSS as it goes, and what the caller finds when it reads again (the overflow
 * event). The bridge keeps its default STREAM_MAX_BUFFER_BYTES (1 MiB).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { type Child, cpuMs, freePort, startChild } from './lib/processes.js';
import { waitReady } from './lib/targets.js';

const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONCURRENCIES = (process.env.STREAM_CONCURRENCIES ?? '1,64').split(',').map(Number);
const PIECES = Number(process.env.STREAM_PIECES ?? 1000);
const DRILL = process.env.STREAM_DRILL;

interface StreamResult {
  readonly events: number;
  readonly streams: number;
}

/** One stream to its end; resolves with how many events it carried. */
function oneStream(url: string, body: string, agent: Agent): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', agent, headers: { Accept: 'text/event-stream' } }, (res) => {
      let events = 0;
      let tail = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        const text = tail + chunk;
        let at = text.indexOf('\n\n');
        let from = 0;
        while (at !== -1) {
          if (text.startsWith('event: ', from)) events += 1;
          from = at + 2;
          at = text.indexOf('\n\n', from);
        }
        tail = text.slice(from);
      });
      res.on('end', () => resolve(events));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function measure(
  url: string,
  pid: number,
  concurrency: number,
  body: string,
): Promise<StreamResult & { cpuUs: number; seconds: number }> {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const until = performance.now() + SECONDS * 1000;
  let events = 0;
  let streams = 0;
  const cpuBefore = cpuMs(pid);
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < until) {
        // Read first, then added: `events += await ...` would add to the total as it was before the await.
        const carried = await oneStream(url, body, agent);
        events += carried;
        streams += 1;
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const cpuUs = (cpuMs(pid) - cpuBefore) * 1000;
  agent.destroy();
  return { events, streams, cpuUs, seconds };
}

async function slowReader(url: string, pid: number): Promise<void> {
  const body = 'x'.repeat(64 * 1024);
  const rssMb = () => Number(/VmRSS:\s+(\d+)/.exec(readStatus(pid))?.[1] ?? 0) / 1024;
  console.log(`bridge RSS before: ${rssMb().toFixed(1)} MB`);
  await new Promise<void>((resolve, reject) => {
    const headers = {
      Accept: 'text/event-stream',
      'Content-Type': 'text/plain',
      'Amqp-Header-Stream-Pieces': String(PIECES),
      'Amqp-Header-Stream-Interval-Ms': '0',
    };
    const req = request(url, { method: 'POST', headers }, (res) => {
      const started = performance.now();
      let received = 0;
      let events = 0;
      let last = '';
      let lastEvent = '';
      const onData = (chunk: Buffer) => {
        received += chunk.length;
        const text = chunk.toString('latin1');
        events += text.split('\nevent: ').length - 1 + (text.startsWith('event: ') ? 1 : 0);
        last = (last + text).slice(-400);
        const named = /event: (\w+)\n(?![\s\S]*event: )/.exec(last);
        if (named !== null) lastEvent = named[1] ?? '';
      };
      res.once('data', (chunk: Buffer) => {
        onData(chunk);
        res.pause();
        console.log(
          `t=${((performance.now() - started) / 1000).toFixed(1)} s: read the first ${received} bytes, then stopped reading`,
        );
        let ticks = 0;
        const watch = setInterval(() => {
          ticks += 1;
          console.log(
            `t=${((performance.now() - started) / 1000).toFixed(1)} s: not reading; bridge RSS ${rssMb().toFixed(1)} MB`,
          );
          if (ticks === 5) {
            clearInterval(watch);
            console.log(`t=${((performance.now() - started) / 1000).toFixed(1)} s: reading again`);
            res.on('data', onData);
            res.resume();
          }
        }, 1000);
      });
      res.on('end', () => {
        console.log(`stream ended after ${received} bytes, ${events} events; the last is "${lastEvent}":`);
        if (lastEvent === 'problem') console.log(last.slice(last.lastIndexOf('event: ')).trim());
        console.log(`bridge RSS after: ${rssMb().toFixed(1)} MB`);
        resolve();
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

function readStatus(pid: number): string {
  return readFileSync(`/proc/${pid}/status`, 'utf8');
}

async function main(): Promise<void> {
  const queue = `bench.stream.${randomBytes(4).toString('hex')}`;
  const children: Child[] = [];
  try {
    const worker =
      DRILL === 'slow-reader'
        ? startChild('node', ['dist/examples/echo-worker.js'], { AMQP_URL, RPC_QUEUE: queue, QUEUE_DURABLE: 'false' })
        : startChild('node', ['dist/examples/streaming-worker.js'], { AMQP_URL, RPC_QUEUE: queue, INTERVAL_MS: '0' });
    children.push(worker);
    await worker.waitForLine(/consuming/);
    const port = await freePort();
    const bridge = startChild('node', ['--max-semi-space-size=4', process.env.BRIDGE_MAIN ?? 'dist/src/main.js'], {
      AMQP_URL,
      PORT: String(port),
      HOST: '127.0.0.1',
      LOG_LEVEL: 'warn',
      RPC_TIMEOUT_MS: '60000',
    });
    children.push(bridge);
    await waitReady(`http://127.0.0.1:${port}/readyz`);
    const url = `http://127.0.0.1:${port}/rpc/${queue}`;
    if (DRILL === 'slow-reader') {
      await slowReader(url, bridge.pid);
      return;
    }
    const body = Array.from({ length: PIECES }, (_, i) => `t${i}`).join(' ');
    await measure(url, bridge.pid, 4, body);
    const table = ['| streams at once | events/s | streams/s | bridge CPU µs/event |', '| ---: | ---: | ---: | ---: |'];
    for (const concurrency of CONCURRENCIES) {
      const rounds: Array<{ rate: number; streams: number; cpu: number }> = [];
      for (let round = 1; round <= ROUNDS; round++) {
        const result = await measure(url, bridge.pid, concurrency, body);
        const rate = result.events / result.seconds;
        const cpu = result.cpuUs / result.events;
        rounds.push({ rate, streams: result.streams / result.seconds, cpu });
        console.error(
          `round ${round} c=${concurrency}: ${result.events} events in ${result.seconds.toFixed(1)} s = ${rate.toFixed(0)} events/s, ${cpu.toFixed(1)} µs CPU/event`,
        );
      }
      const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0;
      table.push(
        `| ${concurrency} | ${median(rounds.map((r) => r.rate)).toFixed(0)} | ${median(rounds.map((r) => r.streams)).toFixed(1)} | ${median(rounds.map((r) => r.cpu)).toFixed(1)} (${Math.min(...rounds.map((r) => r.cpu)).toFixed(1)}-${Math.max(...rounds.map((r) => r.cpu)).toFixed(1)}) |`,
      );
    }
    console.log(
      `${ROUNDS} rounds of ${SECONDS} s, ${PIECES} one-word parts and a final reply per stream; medians (CPU range):\n`,
    );
    console.log(table.join('\n'));
  } finally {
    for (const child of children.reverse()) await child.stop();
  }
}

await main();
