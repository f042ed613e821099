import type { RequestListener } from 'node:http';
import { Writable } from 'node:stream';
import { type Bridge, createBridge } from '../../src/bridge.js';
import { type Config, loadConfig } from '../../src/config/config.js';
import { JwtVerifier } from '../../src/http/access/jwt-verifier.js';
import { listen, type RunningServer } from '../../src/http/server.js';
import { createLogger } from '../../src/observability/logger.js';
import { AMQP_URL, uniqueName } from './broker.js';
import { type ReadMetricOptions, readMetric } from './metric-text.js';

/** The reply mode this run of the suite tests: `direct` (default) or `queue`. */
export const REPLY_MODE = process.env.RPC_REPLY_MODE ?? 'direct';

export interface TestBridge {
  readonly bridge: Bridge;
  readonly server: RunningServer;
  readonly baseUrl: string;
  /** Every log line the bridge wrote, parsed. */
  readonly logs: Array<Record<string, unknown>>;
  /**
   * The current value of one metric, from the bridge's own /metrics text: summed over the series whose
   * labels include `labels`. Throws when the metric is not exposed at all, and when no series matches
   * unless `{ absentIsZero: true }` (see readMetric).
   */
  metric(name: string, labels?: Record<string, string>, options?: ReadMetricOptions): Promise<number>;
  close(): Promise<void>;
}

/** A real bridge on a real broker, listening on a free loopback port, ready when this resolves. */
export async function startTestBridge(env: Record<string, string> = {}): Promise<TestBridge> {
  const config = loadConfig({
    AMQP_URL,
    HOST: '127.0.0.1',
    PORT: '0',
    APP_ID: uniqueName('bridge'),
    // The integration suite runs once per reply mode (vitest projects set it).
    RPC_REPLY_MODE: REPLY_MODE,
    ...env,
  });
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line));
      done();
    },
  });
  const jwt = config.jwt === undefined ? undefined : await JwtVerifier.load(config.jwt);
  const bridge = createBridge(config, createLogger(config.logLevel, sink), { jwt });
  bridge.start();
  let server: RunningServer;
  try {
    await withinMs(bridge.session.whenReady(), 10_000, 'the bridge to become ready');
    server = await listenOnLoopback(bridge.handler, config);
  } catch (err) {
    // Nobody gets a handle to close it: stop it here, or its connection outlives the test.
    await bridge.stop().catch(() => undefined);
    throw err;
  }
  return {
    bridge,
    server,
    baseUrl: `http://127.0.0.1:${server.port}`,
    logs,
    async metric(name, labels = {}, options = {}) {
      return readMetric(await bridge.metrics.registry.metrics(), name, labels, options);
    },
    async close() {
      bridge.beginShutdown();
      await server.close(1_000);
      await bridge.stop();
    },
  };
}

/** Listens on a free loopback port with the configuration's HTTP settings. */
export function listenOnLoopback(handler: RequestListener, config: Config): Promise<RunningServer> {
  return listen(handler, {
    port: 0,
    host: '127.0.0.1',
    backlog: config.httpBacklog,
    headersTimeoutMs: config.httpHeadersTimeoutMs,
    requestTimeoutMs: config.httpRequestTimeoutMs,
  });
}

/** Polls `condition` (which may be async, e.g. an HTTP probe) every 20 ms until it holds; throws after `timeoutMs`. */
export async function waitFor(
  condition: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Resolves as `promise` does, or rejects after `timeoutMs` naming what was awaited. */
export async function withinMs<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
