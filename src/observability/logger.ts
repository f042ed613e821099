import { writeSync } from 'node:fs';
import pino, { type DestinationStream, type Logger } from 'pino';
import type { LogLevel } from '../config/config.js';

/**
 * Log lines are gathered here and go to stdout in batches of BATCH_CHARS, off the request path, at
 * least every FLUSH_INTERVAL_MS, and on exit. sonic-boom (pino's destination) could batch by itself
 * (`minLength`), but it measures its whole pending buffer again on every line. Batched here, stdout sees a
 * sixteenth of the writes; the access log's CPU did not measurably change with it (`npm run
 * bench:compare`, 1.01 ×): what it costs (~15 µs a request at concurrency 64) is mostly serializing the line.
 */
const BATCH_CHARS = 64 * 1024;
const FLUSH_INTERVAL_MS = 250;
const STDOUT_FD = 1;

type Stdout = ReturnType<typeof pino.destination>;

/** pino's destination: lines joined into one write of about BATCH_CHARS each. */
class LineBatches implements DestinationStream {
  private lines: string[] = [];
  /** UTF-16 units, not bytes: a threshold needs no exact count, and measuring bytes costs a pass per line. */
  private chars = 0;

  constructor(private readonly stdout: Stdout) {}

  write(line: string): void {
    this.lines.push(line);
    this.chars += line.length;
    if (this.chars >= BATCH_CHARS) this.pass();
  }

  /** What pino's `logger.flush()` calls: every line on its way, asynchronously. */
  flush(callback?: (err?: Error) => void): void {
    this.pass();
    try {
      this.stdout.flush(callback);
    } catch {
      // flush() throws while an asynchronous write is under way; that write takes the rest after it.
      callback?.();
    }
  }

  /**
   * On exit, when nothing asynchronous will run again: what stdout holds, then the lines gathered here,
   * written synchronously (handed to stdout, they would start an asynchronous write the exit never finishes).
   */
  flushSync(): void {
    const batch = this.take();
    this.stdout.flushSync();
    if (state(this.stdout)._writing) return;
    let rest = Buffer.from(batch);
    while (rest.length > 0) rest = rest.subarray(writeSync(STDOUT_FD, rest));
  }

  /** Every line written out, or `timeoutMs` gone (a collector that has stopped reading). */
  drained(timeoutMs: number): Promise<void> {
    this.pass();
    if (idle(this.stdout)) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.stdout.off('drain', done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.stdout.on('drain', done);
    });
  }

  private pass(): void {
    if (this.lines.length > 0) this.stdout.write(this.take());
  }

  /** The lines gathered so far, as one string, and none gathered any more. */
  private take(): string {
    const batch = this.lines.length === 1 ? (this.lines[0] as string) : this.lines.join('');
    this.lines = [];
    this.chars = 0;
    return batch;
  }
}

/** Log bytes dropped because stdout did not keep up (for the log_bytes_dropped_total metric). */
let droppedBytes = 0;
export function logBytesDropped(): number {
  return droppedBytes;
}

/**
 * `maxBufferBytes` bounds what is held for a stdout that stops reading (a stuck log collector):
 * past it, lines are dropped and counted rather than kept until memory runs out (the first call's
 * bound: every logger of the process without a destination of its own shares one stdout).
 */
export function createLogger(
  level: LogLevel,
  destination?: DestinationStream,
  maxBufferBytes = 16 * 1024 * 1024,
): Logger {
  const options = { level, base: { service: 'amqp-rpc-bridge' } };
  if (destination) return pino(options, destination);
  stdoutBatches ??= batchedStdout(maxBufferBytes);
  return pino(options, stdoutBatches);
}

/** fd 1 is one per process: so is what writes to it (its flush timer, its exit hook). */
let stdoutBatches: LineBatches | undefined;

/**
 * Before a clean exit: the lines logged so far written out, waiting at most `timeoutMs` for a slow
 * reader. Left to the exit hook, lines behind a write still under way would be dropped.
 */
export function flushLogs(timeoutMs: number): Promise<void> {
  return stdoutBatches?.drained(timeoutMs) ?? Promise.resolve();
}

/** sonic-boom keeps these to itself; its version is pinned by the lock file, and the stuck-collector drill reads their effect. */
interface SonicBoomState {
  /** An asynchronous write is under way: in the thread pool, or written and its callback not yet run. */
  _writing: boolean;
  /** Bytes not yet known to be written, the write under way included. */
  _len: number;
}

function state(stdout: Stdout): SonicBoomState {
  return stdout as unknown as SonicBoomState;
}

function idle(stdout: Stdout): boolean {
  return !state(stdout)._writing && state(stdout)._len === 0;
}

function batchedStdout(maxBufferBytes: number): LineBatches {
  // The batches are written as they come (minLength 0); past maxLength unwritten, whole batches are dropped.
  const stdout = pino.destination({ dest: STDOUT_FD, sync: false, minLength: 0, maxLength: maxBufferBytes });
  stdout.on('drop', (data: string) => {
    droppedBytes += Buffer.byteLength(data);
  });
  // sonic-boom's flushSync (pino's own exit hook calls it too) writes what is queued even while an
  // asynchronous write is under way: after a partial write that never finishes, or beside one still
  // running, that cuts a line in two and joins it to the next, which no collector can parse. On exit with
  // a write under way, what is queued is dropped instead; a clean stop drains first (flushLogs).
  const flushQueued = stdout.flushSync.bind(stdout);
  stdout.flushSync = () => {
    if (!state(stdout)._writing) flushQueued();
  };
  const batches = new LineBatches(stdout);
  setInterval(() => batches.flush(), FLUSH_INTERVAL_MS).unref();
  // pino writes out what stdout holds on exit; the lines still gathered here follow it.
  process.on('exit', () => {
    try {
      batches.flushSync();
    } catch {}
  });
  return batches;
}
