import { createServer, type RequestListener, type Server, STATUS_CODES } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { PROBLEM_TYPE_PREFIX, PROBLEMS, type ProblemCode } from './errors.js';

/** Longer than the idle timeout of common load balancers (60 s), so they close first, not us. */
const KEEP_ALIVE_TIMEOUT_MS = 65_000;
/** How often Node looks for requests past their timeouts (its default, 30 s, would let them overstay). */
const TIMEOUT_CHECK_INTERVAL_MS = 1_000;

export interface ListenOptions {
  readonly port: number;
  readonly host: string;
  /**
   * Connections the kernel queues before node accepts them (capped by net.core.somaxconn): a burst
   * larger than it is dropped and retried by clients a second later.
   */
  readonly backlog: number;
  /** Slow or stalled clients must not hold sockets: how long the headers, and the whole request, may take. */
  readonly headersTimeoutMs: number;
  readonly requestTimeoutMs: number;
}

export interface RunningServer {
  readonly server: Server;
  readonly port: number;
  /** Stops accepting connections, waits for open requests up to `graceMs`, then drops the rest. */
  close(graceMs: number): Promise<void>;
}

export async function listen(handler: RequestListener, options: ListenOptions): Promise<RunningServer> {
  const { port, host, backlog } = options;
  const server = createServer(
    {
      headersTimeout: options.headersTimeoutMs,
      requestTimeout: options.requestTimeoutMs,
      keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
      connectionsCheckingInterval: TIMEOUT_CHECK_INTERVAL_MS,
    },
    handler,
  );
  server.on('clientError', answerClientError);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, backlog, () => {
      server.off('error', reject);
      resolve();
    });
  });
  let closing: Promise<void> | undefined;
  return {
    server,
    port: (server.address() as AddressInfo).port,
    close(graceMs) {
      closing ??= new Promise<void>((resolve) => {
        const force = setTimeout(() => server.closeAllConnections(), graceMs);
        server.close(() => {
          clearTimeout(force);
          resolve();
        });
        server.closeIdleConnections();
      });
      return closing;
    },
  };
}

/**
 * What Node refuses before any route runs (oversized headers, malformed HTTP) still leaves as a
 * problem document, like every other error of the bridge; then the connection closes.
 */
function answerClientError(err: Error & { code?: string }, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  const code: ProblemCode =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? 'headers-too-large'
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? 'request-timeout'
        : 'malformed-request';
  const { status, title } = PROBLEMS[code];
  const body = JSON.stringify({ type: PROBLEM_TYPE_PREFIX + code, title, status, detail: err.code ?? err.message });
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/problem+json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}
