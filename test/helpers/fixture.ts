import { afterAll, beforeAll } from 'vitest';
import { type RunningWorker, startEchoWorker } from '../../examples/echo-worker.js';
import { startTestBridge, type TestBridge } from './bridge.js';
import { AMQP_URL, connectTestBroker, type TestBroker, uniqueName } from './broker.js';

/** What most integration files need: a bridge, a connection to arrange things, and an echo worker. */
export interface EchoFixture {
  readonly bridge: TestBridge;
  readonly broker: TestBroker;
  /** A queue the sample echo worker consumes. */
  readonly echoQueue: string;
}

export interface EchoFixtureOptions {
  /** The echo worker's queue (default: a unique `test.echo.*` name), e.g. to match an allowlist. */
  readonly echoQueue?: string;
}

/**
 * Registers beforeAll/afterAll hooks for the file and returns the fixture they fill. Read its
 * fields inside tests (they are set once beforeAll has run). Hooks a file registers before calling
 * this run before the fixture is built and after it is torn down (vitest's `stack` hook order).
 */
export function useEchoBridge(env: Record<string, string> = {}, options: EchoFixtureOptions = {}): EchoFixture {
  const state: { bridge?: TestBridge; broker?: TestBroker; worker?: RunningWorker; echoQueue: string } = {
    echoQueue: options.echoQueue ?? uniqueName('echo'),
  };
  beforeAll(async () => {
    state.broker = await connectTestBroker();
    state.worker = await startEchoWorker({ url: AMQP_URL, queue: state.echoQueue, durable: false });
    state.bridge = await startTestBridge(env);
  });
  afterAll(async () => {
    // Each one is closed even when closing the one before failed.
    await closeAll([state.bridge, state.worker, state.broker]);
  });
  return {
    get bridge() {
      return defined(state.bridge, 'bridge');
    },
    get broker() {
      return defined(state.broker, 'broker');
    },
    echoQueue: state.echoQueue,
  };
}

/**
 * Closes each in turn, every one even when an earlier one fails, then throws the first failure:
 * for teardown, where one failing close must not leak the rest.
 */
export async function closeAll(closables: ReadonlyArray<{ close(): Promise<unknown> } | undefined>): Promise<void> {
  const failures: unknown[] = [];
  for (const closable of closables) {
    try {
      await closable?.close();
    } catch (err) {
      failures.push(err);
    }
  }
  if (failures.length > 0) throw failures[0];
}

/**
 * Waits for things started side by side. When one fails to start, the others are closed before the
 * failure is thrown: nobody else holds them.
 */
export async function allStarted<const P extends ReadonlyArray<Promise<unknown>>>(
  starting: P,
  close: (started: Awaited<P[number]>) => Promise<unknown>,
): Promise<{ -readonly [K in keyof P]: Awaited<P[K]> }> {
  const settled = await Promise.allSettled(starting);
  const failed = settled.find((result) => result.status === 'rejected');
  if (failed === undefined) return settled.map((result) => (result as PromiseFulfilledResult<unknown>).value) as never;
  const started = settled.flatMap((result) =>
    result.status === 'fulfilled' ? [result.value as Awaited<P[number]>] : [],
  );
  await Promise.allSettled(started.map(close));
  throw failed.reason;
}

function defined<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`the ${what} is used before beforeAll has run`);
  return value;
}
