import { createServer, type RequestListener, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** Slow or stalled clients must not hold sockets: these bound how long the request itself may take. */
const HEADERS_TIMEOUT_MS = 15_000;
const REQUEST_TIMEOUT_MS = 60_000;
/** Longer than the idle timeout of common load balancers (60 s), so they close first, not us. */
const KEEP_ALIVE_TIMEOUT_MS = 65_000;
/** Node's own default is 511; a bridge in front of bursty callers absorbs more before dropping SYNs. */
export const DEFAULT_BACKLOG = 4096;

export interface RunningServer {
  readonly server: Server;
  readonly port: number;
  /** Stops accepting connections, waits for open requests up to `graceMs`, then drops the rest. */
  close(graceMs: number): Promise<void>;
}

/**
 * Listens on host:port. `backlog` bounds connections the kernel queues before node accepts them
 * (capped by net.core.somaxconn): a burst larger than it is dropped and retried by clients after 1 s.
 */
export async function listen(
  handler: RequestListener,
  port: number,
  host: string,
  backlog = DEFAULT_BACKLOG,
): Promise<RunningServer> {
  const server = createServer(
    { headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: REQUEST_TIMEOUT_MS, keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS },
    handler,
  );
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
