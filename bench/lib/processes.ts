import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const CLOCK_TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

export interface Child {
  readonly pid: number;
  readonly process: ChildProcess;
  /** Resolves with the first stdout line that matches. */
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>;
  stop(): Promise<void>;
}

export interface ChildOptions {
  /**
   * Append the child's stdout to this file (opened here and handed over as its fd 1) instead of
   * reading it line by line: a bench must not spend its own event loop on a target's log lines.
   * waitForLine then never resolves.
   */
  readonly stdoutFile?: string;
}

/**
 * Starts a child; stdout is read line by line (and otherwise discarded) unless options.stdoutFile
 * says where it goes; stderr passes through.
 */
export function startChild(
  command: string,
  args: string[],
  env: Record<string, string>,
  options: ChildOptions = {},
): Child {
  const stdoutFd = options.stdoutFile === undefined ? undefined : openSync(options.stdoutFile, 'a');
  const child = spawn(command, args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', stdoutFd ?? 'pipe', 'inherit'],
  });
  // The child holds its own copy of the descriptor now.
  if (stdoutFd !== undefined) closeSync(stdoutFd);
  const waiters: Array<{ pattern: RegExp; resolve: (line: string) => void }> = [];
  if (child.stdout) readLines(child.stdout, waiters);
  return {
    pid: child.pid ?? 0,
    process: child,
    waitForLine(pattern, timeoutMs = 15_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no line matching ${pattern} from ${command} ${args.join(' ')}`)),
          timeoutMs,
        );
        waiters.push({
          pattern,
          resolve: (line) => {
            clearTimeout(timer);
            resolve(line);
          },
        });
      });
    },
    stop() {
      if (child.exitCode !== null) return Promise.resolve();
      return new Promise((resolve) => {
        const kill = setTimeout(() => child.kill('SIGKILL'), 5_000);
        child.once('exit', () => {
          clearTimeout(kill);
          resolve();
        });
        child.kill('SIGTERM');
      });
    },
  };
}

function readLines(
  stdout: NodeJS.ReadableStream,
  waiters: Array<{ pattern: RegExp; resolve: (line: string) => void }>,
): void {
  createInterface({ input: stdout }).on('line', (line) => {
    for (const waiter of [...waiters]) {
      if (waiter.pattern.test(line)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    }
  });
}

/** CPU time (user + system) the process has used so far, in milliseconds. */
export function cpuMs(pid: number): number {
  const { user, system } = cpuSplitMs(pid);
  return user + system;
}

/** CPU time the process has used so far in its own code (user) and in the kernel for it (system), in ms. */
export function cpuSplitMs(pid: number): { readonly user: number; readonly system: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may contain spaces) start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const toMs = (ticks: number) => (ticks * 1000) / CLOCK_TICKS_PER_SECOND;
  return { user: toMs(Number(fields[11])), system: toMs(Number(fields[12])) };
}

/**
 * Starts the process's peak RSS (VmHWM) afresh from its RSS now (Linux: clear_refs 5, allowed on a
 * process of our own), so that a row's peak is its own. Returns that RSS in bytes.
 */
export function resetPeakRss(pid: number): number {
  writeFileSync(`/proc/${pid}/clear_refs`, '5');
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+) kB/m.exec(status);
  return match ? Number(match[1]) * 1024 : 0;
}

/** Peak resident set size of the process so far, in bytes (VmHWM). */
export function peakRssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmHWM:\s+(\d+) kB/m.exec(status);
  return match ? Number(match[1]) * 1024 : 0;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/**
 * The node flags `npm start` gives the bridge in the checkout at `dir` (its package.json's
 * `node <flags> dist/src/main.js`): every bench runs the bridge as it is deployed.
 */
export function npmStartFlags(dir: string): string[] {
  const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { scripts?: Record<string, string> };
  const match = /^node\s+(.*?)\s*dist\/src\/main\.js/.exec(pkg.scripts?.start ?? '');
  return match?.[1] ? match[1].split(/\s+/).filter(Boolean) : [];
}
