import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import request from 'supertest';
import { AMQP_URL } from './broker.js';
import { readMetric } from './metric-text.js';

export interface BridgeProcess {
  readonly child: ChildProcess;
  readonly baseUrl: string;
  readonly exited: Promise<number | null>;
  /** Every line the process has written to stdout so far (its JSON log lines), parsed. */
  readonly logs: ReadonlyArray<Record<string, unknown>>;
  /** Lines of stdout that are not whole JSON objects: a log collector would choke on each. */
  readonly malformedLines: ReadonlyArray<string>;
  /** Once stdout has ended and every line of it has been read. */
  readonly outputRead: Promise<void>;
  inFlight(): Promise<number>;
  /** Kills it (SIGKILL) unless it has exited already, and resolves once it has: for `finally`/afterAll. */
  stop(): Promise<void>;
}

/** What `npm start` runs, from source here. */
const COMMAND = ['--import', 'tsx', 'src/main.ts'];

/** The real process, as `npm start` runs it (from source here), on a free port. */
export async function startBridgeProcess(
  env: Record<string, string>,
  { waitForReady = true }: { waitForReady?: boolean } = {},
): Promise<BridgeProcess> {
  const child = spawn(process.execPath, COMMAND, {
    env: { ...process.env, AMQP_URL, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const logs: Array<Record<string, unknown>> = [];
  const malformedLines: string[] = [];
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const outputRead = new Promise<void>((resolve) => lines.once('close', resolve));
  let baseUrl: string;
  try {
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the bridge process did not start listening')), 15_000);
      lines.on('line', (line) => {
        const entry = parsedLine(line);
        if (entry === undefined) {
          malformedLines.push(line);
          return;
        }
        logs.push(entry);
        if (entry.msg === 'listening' && entry.port !== undefined) {
          clearTimeout(timer);
          resolve(entry.port);
        }
      });
    });
    baseUrl = `http://127.0.0.1:${port}`;
    for (let attempt = 0; waitForReady && (await request(baseUrl).get('/readyz')).status !== 200; attempt++) {
      if (attempt > 100) throw new Error('the bridge process never became ready');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  } catch (err) {
    // The caller never gets the process to stop: do not leave it running.
    child.kill('SIGKILL');
    await exited;
    throw err;
  }
  return {
    child,
    baseUrl,
    exited,
    logs,
    malformedLines,
    outputRead,
    async inFlight() {
      return readMetric((await request(baseUrl).get('/metrics')).text, 'rpc_in_flight', {});
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** How a bridge process that is expected not to start (bad configuration) ended. */
export interface FailedStart {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the process until it exits by itself, e.g. on a configuration it refuses. */
export function runBridgeProcessUntilExit(env: Record<string, string>, timeoutMs = 15_000): Promise<FailedStart> {
  const child = spawn(process.execPath, COMMAND, {
    env: { ...process.env, AMQP_URL, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString('utf8');
  });
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the bridge process was still running after ${timeoutMs} ms:\n${stdout}${stderr}`));
    }, timeoutMs);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function parsedLine(line: string): { msg?: string; port?: number } | undefined {
  try {
    const entry: unknown = JSON.parse(line);
    return typeof entry === 'object' && entry !== null ? entry : undefined;
  } catch {
    return undefined;
  }
}
