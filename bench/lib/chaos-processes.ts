import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { createInterface } from 'node:readline';

/** A child whose stdout and stderr lines go to a callback (and, when given, a log file). */
export interface LoggedChild {
  readonly pid: number;
  readonly process: ChildProcess;
  /** Resolves with the exit code (or the signal's name) once the process has gone. */
  readonly exited: Promise<number | string>;
  /** Resolves with the first line that matches; rejects if the process exits or `timeoutMs` passes first. */
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with how it exited. */
  stop(graceMs?: number): Promise<number | string>;
}

export function startLogged(
  command: string,
  args: string[],
  env: Record<string, string>,
  onLine: (line: string, stream: 'stdout' | 'stderr') => void,
): LoggedChild {
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const waiters = new Set<{ pattern: RegExp; resolve: (line: string) => void }>();
  for (const stream of ['stdout', 'stderr'] as const) {
    createInterface({ input: child[stream] as NodeJS.ReadableStream }).on('line', (line) => {
      onLine(line, stream);
      for (const waiter of waiters) if (waiter.pattern.test(line)) waiter.resolve(line);
    });
  }
  const exited = new Promise<number | string>((resolve) =>
    child.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown')),
  );
  // A failed spawn emits 'error' and no 'exit'.
  child.once('error', () => child.emit('exit', null, 'spawn-error'));
  return {
    pid: child.pid ?? 0,
    process: child,
    exited,
    waitForLine(pattern, timeoutMs = 30_000) {
      return new Promise((resolve, reject) => {
        const waiter = {
          pattern,
          resolve: (line: string) => {
            clearTimeout(timer);
            waiters.delete(waiter);
            resolve(line);
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`no line matching ${pattern} within ${timeoutMs} ms from ${command} ${args.join(' ')}`));
        }, timeoutMs);
        waiters.add(waiter);
        void exited.then((how) => {
          if (!waiters.has(waiter)) return;
          clearTimeout(timer);
          waiters.delete(waiter);
          reject(new Error(`${command} ${args.join(' ')} exited (${how}) before a line matching ${pattern}`));
        });
      });
    },
    async stop(graceMs = 10_000) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const kill = setTimeout(() => child.kill('SIGKILL'), graceMs);
        const how = await exited;
        clearTimeout(kill);
        return how;
      }
      return exited;
    },
  };
}

/**
 * The sample echo worker, kept running the way a supervisor (systemd, Kubernetes) would: it exits 1
 * when it loses the broker, and is started again a second later, again and again while the broker is
 * away. `kill()` takes it down hard (SIGKILL) and keeps it down until `resume()`.
 */
export class WorkerSupervisor {
  private child: LoggedChild | undefined;
  private held = false;
  private stopped = false;
  private consumingNow = false;
  private restartTimer: NodeJS.Timeout | undefined;
  /** Starts after the first, for whatever reason. */
  restarts = 0;

  constructor(
    private readonly env: Record<string, string>,
    private readonly log: WriteStream | undefined,
  ) {}

  static withLogFile(env: Record<string, string>, logFile: string): WorkerSupervisor {
    return new WorkerSupervisor(env, createWriteStream(logFile, { flags: 'a' }));
  }

  get consuming(): boolean {
    return this.consumingNow;
  }

  /** Starts the worker; resolves once it consumes (or throws if the first attempt fails). */
  async start(): Promise<void> {
    const child = this.spawn();
    await child.waitForLine(/consuming/);
    this.consumingNow = true;
  }

  /** SIGKILL, and no restart until resume(). */
  async kill(): Promise<void> {
    this.held = true;
    clearTimeout(this.restartTimer);
    const child = this.child;
    if (child !== undefined) {
      child.process.kill('SIGKILL');
      await child.exited;
    }
  }

  resume(): void {
    this.held = false;
    this.scheduleRestart(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.restartTimer);
    await this.child?.stop();
    this.log?.end();
  }

  private spawn(): LoggedChild {
    const child = startLogged('node', ['dist/examples/echo-worker.js'], this.env, (line, stream) =>
      this.log?.write(`${new Date().toISOString()} ${stream} ${line}\n`),
    );
    this.child = child;
    void child.exited.then((how) => {
      if (this.child !== child) return;
      this.consumingNow = false;
      this.log?.write(`${new Date().toISOString()} exited (${how})\n`);
      this.scheduleRestart(1_000);
    });
    return child;
  }

  private scheduleRestart(delayMs: number): void {
    if (this.held || this.stopped) return;
    clearTimeout(this.restartTimer);
    this.restartTimer = setTimeout(() => {
      if (this.held || this.stopped) return;
      this.restarts += 1;
      const child = this.spawn();
      child.waitForLine(/consuming/).then(
        () => {
          if (this.child === child) this.consumingNow = true;
        },
        // Its exit schedules the next attempt; a start that hangs is killed so that one does.
        () => child.process.kill('SIGKILL'),
      );
    }, delayMs);
  }
}
