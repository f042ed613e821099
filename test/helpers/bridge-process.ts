import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import request from 'supertest';
import { readMetric } from './bridge.js';
import { AMQP_URL } from './broker.js';

export interface BridgeProcess {
  readonly child: ChildProcess;
  readonly baseUrl: string;
  readonly exited: Promise<number | null>;
  inFlight(): Promise<number>;
}

/** The real process, as `npm start` runs it (from source here), on a free port. */
export async function startBridgeProcess(
  env: Record<string, string>,
  { waitForReady = true }: { waitForReady?: boolean } = {},
): Promise<BridgeProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: { ...process.env, AMQP_URL, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the bridge process did not start listening')), 15_000);
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      const entry = JSON.parse(line) as { msg?: string; port?: number };
      if (entry.msg === 'listening' && entry.port !== undefined) {
        clearTimeout(timer);
        resolve(entry.port);
      }
    });
  });
  const baseUrl = `http://127.0.0.1:${port}`;
  for (let attempt = 0; waitForReady && (await request(baseUrl).get('/readyz')).status !== 200; attempt++) {
    if (attempt > 100) throw new Error('the bridge process never became ready');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    child,
    baseUrl,
    exited,
    async inFlight() {
      return readMetric((await request(baseUrl).get('/metrics')).text, 'rpc_in_flight', {});
    },
  };
}
