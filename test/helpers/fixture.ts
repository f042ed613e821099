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

/**
 * Registers beforeAll/afterAll hooks for the file and returns the fixture they fill. Read its
 * fields inside tests (they are set once beforeAll has run).
 */
export function useEchoBridge(env: Record<string, string> = {}): EchoFixture {
  const state: { bridge?: TestBridge; broker?: TestBroker; worker?: RunningWorker; echoQueue: string } = {
    echoQueue: uniqueName('echo'),
  };
  beforeAll(async () => {
    state.broker = await connectTestBroker();
    state.worker = await startEchoWorker({ url: AMQP_URL, queue: state.echoQueue, durable: false });
    state.bridge = await startTestBridge(env);
  });
  afterAll(async () => {
    await state.bridge?.close();
    await state.worker?.close();
    await state.broker?.close();
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

function defined<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`the ${what} is used before beforeAll has run`);
  return value;
}
