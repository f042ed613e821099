import { Agent, request as httpRequest } from 'node:http';
import { peakRssBytes } from './processes.js';

export interface InFlightResult {
  readonly requests: number;
  readonly ok: number;
  readonly wrong: number;
  readonly byStatus: Record<string, number>;
  readonly seconds: number;
  /** How long the worker held each request. */
  readonly delayMs: number;
  readonly peakRssMb: number;
  readonly peakHeapMb: number;
  /** The most RPCs the bridge reported in flight at once (sampled every 200 ms). */
  readonly peakInFlight: number;
  readonly inFlightAfter: number;
}

/**
 * Opens `requests` requests at once (in batches the listen queue can take) on a bridge whose worker
 * holds each for `delayMs`: memory and bookkeeping under many open RPCs. Not a latency measurement,
 * so it runs from this process.
 */
export async function runInFlight(
  port: number,
  pid: number,
  queue: string,
  requests: number,
  delayMs: number,
): Promise<InFlightResult> {
  const agent = new Agent({ keepAlive: false, maxSockets: Number.POSITIVE_INFINITY });
  const byStatus: Record<string, number> = {};
  let ok = 0;
  let wrong = 0;
  let peakHeap = 0;
  let peakInFlight = 0;
  const poll = setInterval(() => {
    void scrape(port, 'nodejs_heap_size_used_bytes').then((heap) => {
      peakHeap = Math.max(peakHeap, heap);
    });
    void scrape(port, 'rpc_in_flight').then((count) => {
      peakInFlight = Math.max(peakInFlight, count);
    });
  }, 200);
  const started = performance.now();
  const pending: Array<Promise<void>> = [];
  for (let i = 0; i < requests; i++) {
    // 250 new connections every 100 ms: faster, and a 2-core machine overflows the listen queue.
    if (i > 0 && i % 250 === 0) await new Promise((resolve) => setTimeout(resolve, 100));
    const expected = `in-flight-${i}`;
    pending.push(
      new Promise<void>((resolve) => {
        const req = httpRequest(
          {
            host: '127.0.0.1',
            port,
            path: `/rpc/${queue}`,
            method: 'POST',
            agent,
            headers: { 'Amqp-Header-Delay-Ms': String(delayMs), 'Amqp-Timeout': '60000' },
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (chunk: Buffer) => chunks.push(chunk));
            res.on('end', () => {
              const status = String(res.statusCode);
              byStatus[status] = (byStatus[status] ?? 0) + 1;
              if (res.statusCode === 200 && Buffer.concat(chunks).toString() === expected) ok += 1;
              else wrong += 1;
              resolve();
            });
          },
        );
        req.on('error', () => {
          byStatus.error = (byStatus.error ?? 0) + 1;
          wrong += 1;
          resolve();
        });
        req.end(expected);
      }),
    );
  }
  await Promise.all(pending);
  clearInterval(poll);
  return {
    requests,
    ok,
    wrong,
    byStatus,
    seconds: (performance.now() - started) / 1000,
    delayMs,
    peakRssMb: peakRssBytes(pid) / 1024 / 1024,
    peakHeapMb: peakHeap / 1024 / 1024,
    peakInFlight,
    inFlightAfter: await scrape(port, 'rpc_in_flight'),
  };
}

async function scrape(port: number, metric: string): Promise<number> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  const text = await response.text();
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${metric} `));
  return line ? Number(line.split(' ')[1]) : Number.NaN;
}
