import { randomUUID } from 'node:crypto';
import {
  createServer,
  type IncomingMessage,
  type RequestListener,
  type Server,
  type ServerResponse,
  STATUS_CODES,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { sendProblem } from './problem-response.js';
import { HttpProblem, PROBLEMS, type ProblemCode, problemDocument } from './problems.js';
import { assignRequestId } from './request-id.js';

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
      // Node would answer a missing Host with an empty 400 of its own; the listener below answers
      // it with a problem document instead.
      requireHostHeader: false,
    },
    (req, res) => {
      if (lacksHost(req)) refuseMissingHost(req, res);
      else handler(req, res);
    },
  );
  server.on('clientError', answerClientError);
  // A request with any Expect but 100-continue (which Node handles itself) comes here instead of
  // the request listener; without this listener Node would send an empty 417.
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    if (lacksHost(req)) refuseMissingHost(req, res);
    else refuse(req, res, new HttpProblem('expectation-failed', 'The only expectation supported is 100-continue'));
  });
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

/** RFC 9112 §3.2: an HTTP/1.1 request must carry Host (HTTP/1.0 need not). */
function lacksHost(req: IncomingMessage): boolean {
  return req.headers.host === undefined && req.httpVersionMajor === 1 && req.httpVersionMinor === 1;
}

function refuseMissingHost(req: IncomingMessage, res: ServerResponse): void {
  res.setHeader('Connection', 'close');
  refuse(req, res, new HttpProblem('malformed-request', 'An HTTP/1.1 request must have a Host header'));
}

/** Answers a request no route sees, as a problem document with its request id, like any other. */
function refuse(req: IncomingMessage, res: ServerResponse, problem: HttpProblem): void {
  sendProblem(res, problem, assignRequestId(req, res));
}

/** Sockets whose parser error has been answered, or waits for the responses ahead of it. */
const refusedSockets = new WeakSet<Duplex>();

/** What Node keeps on a server socket: the response it is writing now (pipelined ones queue behind it). */
type ServerSocket = Duplex & { _httpMessage?: ServerResponse | null };

/**
 * What Node's parser refuses (oversized headers, malformed HTTP, too slow) still leaves as a
 * problem document with a request id, like every other error of the bridge; then the connection
 * closes. Requests pipelined ahead of the refused bytes are answered first, in order.
 */
function answerClientError(err: Error & { code?: string }, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  // The parser stays failed and reports again for whatever else arrives: answer once.
  if (refusedSockets.has(socket)) return;
  refusedSockets.add(socket);
  const code: ProblemCode =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? 'headers-too-large'
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? 'request-timeout'
        : 'malformed-request';
  afterEarlierResponses(socket as ServerSocket, () => {
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    // No request was parsed, so no caller's X-Request-Id can be trusted: always a fresh one.
    const requestId = randomUUID();
    const { status } = PROBLEMS[code];
    const body = JSON.stringify(problemDocument(new HttpProblem(code, err.code ?? err.message), requestId));
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nDate: ${new Date().toUTCString()}\r\nX-Request-Id: ${requestId}\r\n` +
        `Content-Type: application/problem+json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  });
}

/**
 * Runs `then` once every response to a request received in full before the refused bytes has been
 * written, so that a valid request pipelined ahead of garbage still gets its answer. A response
 * whose request the parser error cut short will never be complete: it is not waited for, and one
 * already half-written cannot be followed by anything (the connection is dropped, as Node does).
 */
function afterEarlierResponses(socket: ServerSocket, then: () => void): void {
  // Node detaches a response in its own 'finish' listener (the first one), and then attaches the
  // next pipelined one: a response still attached has not finished, whatever writableFinished says.
  const pending = socket._httpMessage;
  if (pending == null) {
    then();
  } else if (pending.writableEnded || pending.req.complete) {
    pending.once('finish', () => afterEarlierResponses(socket, then));
  } else if (pending.headersSent) {
    socket.destroy();
  } else {
    then();
  }
}
