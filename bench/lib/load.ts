import type { ClientResult } from '../clients/client-env.js';
import type { BodyKind } from './bodies.js';
import { cpuMs, peakRssBytes, resetPeakRss, startChild } from './processes.js';

const MB = 1024 * 1024;

import type { RunResult } from './stats.js';

export interface Load {
  readonly target: string;
  readonly url: string;
  /** The process whose CPU time is charged to the target (for a bridge, the bridge itself). */
  readonly cpuPid: number;
  readonly concurrency: number;
  readonly bodyBytes: number;
  readonly bodyKind: BodyKind;
  readonly warmupSeconds: number;
  readonly seconds: number;
  /** Default: the serial client at concurrency 1, autocannon above. */
  readonly client?: 'serial' | 'autocannon';
  /** Called when the client's warm-up is over and measuring begins. */
  readonly onMeasuring?: () => void;
  /** Record the target's peak RSS during the measured part (and its rise above the RSS before). */
  readonly memory?: boolean;
}

/**
 * Runs one load against a target from a client process of its own: the serial client at concurrency
 * 1 (one keep-alive connection, one request after another, as a sidecar calls), autocannon above.
 * This process only waits meanwhile, so nothing of ours shares an event loop with the measurement.
 */
export async function runLoad(load: Load): Promise<RunResult> {
  const client = load.client ?? (load.concurrency === 1 ? 'serial' : 'autocannon');
  const child = startChild('node', ['--import', 'tsx', `bench/clients/${client}-client.ts`], {
    TARGET_URL: load.url,
    BODY_BYTES: String(load.bodyBytes),
    BODY_KIND: load.bodyKind,
    CONCURRENCY: String(load.concurrency),
    WARMUP_SECONDS: String(load.warmupSeconds),
    SECONDS: String(load.seconds),
  });
  const startupMs = 20_000;
  await child.waitForLine(/"measuring"/, startupMs + load.warmupSeconds * 1000);
  const cpuBefore = cpuMs(load.cpuPid);
  const rssBefore = load.memory === true ? resetPeakRss(load.cpuPid) : 0;
  load.onMeasuring?.();
  const line = await child.waitForLine(/"requests"/, startupMs + load.seconds * 1000);
  const cpuUsed = cpuMs(load.cpuPid) - cpuBefore;
  const peakRss = load.memory === true ? peakRssBytes(load.cpuPid) : 0;
  await child.stop();
  const result = JSON.parse(line) as ClientResult;
  return {
    target: load.target,
    concurrency: load.concurrency,
    bodyBytes: load.bodyBytes,
    requests: result.requests,
    seconds: result.seconds,
    rps: result.requests / result.seconds,
    p50: result.p50,
    p99: result.p99,
    max: result.max,
    errors: result.errors,
    non2xx: result.non2xx,
    cpuMsPerRequest: result.requests > 0 ? cpuUsed / result.requests : 0,
    client,
    ...(result.connections !== undefined && { connections: result.connections }),
    ...(load.memory === true && { peakRssMb: peakRss / MB, rssRiseMb: (peakRss - rssBefore) / MB }),
  };
}
