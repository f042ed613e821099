import autocannon from 'autocannon';
import { cpuMs } from './processes.js';
import { LatencyRecorder, type RunResult } from './stats.js';

export interface HttpLoad {
  readonly target: string;
  readonly url: string;
  readonly pid: number;
  readonly concurrency: number;
  readonly body: Buffer;
  readonly seconds: number;
  readonly headers?: Record<string, string>;
  /** Requests per second in all, when the load is to be offered at a fixed rate rather than as fast as answered. */
  readonly rate?: number;
}

/**
 * Keep-alive load from autocannon. Its own histogram rounds to whole milliseconds, too coarse for a
 * sub-millisecond RPC, so latencies are taken from its per-response event (fractional ms) instead.
 */
export async function runHttpLoad(load: HttpLoad): Promise<RunResult> {
  const latencies = new LatencyRecorder();
  const cpuBefore = cpuMs(load.pid);
  const instance = autocannon({
    url: load.url,
    method: 'POST',
    body: load.body,
    headers: { 'content-type': 'application/octet-stream', ...load.headers },
    connections: load.concurrency,
    duration: load.seconds,
    ...(load.rate === undefined ? {} : { overallRate: load.rate }),
  });
  (instance as unknown as NodeJS.EventEmitter).on(
    'response',
    (_client: unknown, _status: number, _bytes: number, responseTime: number) => {
      latencies.record(responseTime);
    },
  );
  const result = await instance;
  const cpuUsed = cpuMs(load.pid) - cpuBefore;
  const summary = latencies.summary();
  const answered = result.requests.total;
  return {
    target: load.target,
    concurrency: load.concurrency,
    bodyBytes: load.body.length,
    requests: answered,
    seconds: result.duration,
    rps: answered / result.duration,
    p50: summary.p50,
    p99: summary.p99,
    max: summary.max,
    errors: result.errors + result.timeouts,
    non2xx: result.non2xx,
    cpuMsPerRequest: answered > 0 ? cpuUsed / answered : 0,
  };
}
