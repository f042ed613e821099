import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Debian's chromium (`apt-get install chromium`), or CHROMIUM; undefined when there is none. */
export const CHROMIUM = [process.env.CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser'].find(
  (path): path is string => path !== undefined && path !== '' && existsSync(path),
);

/** Flags that run it headless as root in a container, talking to nothing but the test's pages. */
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export interface PageServer {
  /** The page's origin (what the browser sends as Origin). */
  readonly origin: string;
  /** Resolves with what the page POSTs to /report. */
  report(timeoutMs: number): Promise<unknown>;
  close(): Promise<void>;
}

/** Serves one HTML page at / and takes the page's report at POST /report. */
export async function servePage(html: () => string): Promise<PageServer> {
  let deliver: (report: unknown) => void = () => undefined;
  const reported = new Promise<unknown>((resolve) => {
    deliver = resolve;
  });
  const server: Server = createServer((req, res) => {
    if (req.method === 'POST' && req.url === '/report') {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        res.end('ok');
        deliver(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      });
      return;
    }
    if (req.url === '/') {
      res.setHeader('Content-Type', 'text/html; charset=utf-8');
      res.end(html());
      return;
    }
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  return {
    // localhost, while the bridge is at 127.0.0.1: another origin, as a real page's would be.
    origin: `http://localhost:${port}`,
    report(timeoutMs) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`the page reported nothing within ${timeoutMs} ms`)), timeoutMs);
      });
      return Promise.race([reported, timeout]).finally(() => clearTimeout(timer));
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * Opens `url` in a headless chromium with a profile of its own; close() kills it, with the helper
 * processes it started (its process group: they would go on writing to the profile), and removes the profile.
 */
export function openBrowser(executable: string, url: string): { readonly child: ChildProcess; close(): Promise<void> } {
  const profile = mkdtempSync(join(tmpdir(), 'chromium-test-'));
  const child = spawn(executable, [...FLAGS, `--user-data-dir=${profile}`, url], { stdio: 'ignore', detached: true });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    child,
    async close() {
      try {
        if (child.pid !== undefined && child.exitCode === null) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // Gone already.
      }
      await exited;
      rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    },
  };
}
