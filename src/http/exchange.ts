import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { toError } from '../errors.js';
import type { Metrics } from '../observability/metrics.js';
import { logRequest, type RpcLogFields } from './access-log.js';
import { sendProblem } from './problem-response.js';
import { HttpProblem, internalProblem } from './problems.js';
import { assignRequestId } from './request-id.js';

declare module 'node:http' {
  interface IncomingMessage {
    /** The request's exchange: its id, route and log fields (set by the edge before any route runs). */
    exchange?: HttpExchange;
  }
}

/** nginx's code for "client closed the request": nothing was answered. */
const CLIENT_CLOSED = 499;

export interface ExchangeRecorders {
  readonly metrics: Metrics;
  readonly logger: Logger;
}

/**
 * One HTTP request from arrival to its one log line and one metrics record, whichever route serves it
 * (the RPC pipeline or express). Built by the edge before routing; routes set its `route` pattern and,
 * for an RPC, its `rpc` log fields; problems leave through `fail`.
 */
export class HttpExchange {
  readonly startedAt = performance.now();
  /** X-Request-Id: the caller's when sane, else a new UUID; echoed on the response. */
  readonly id: string;
  /** The route pattern that served it (never the raw path, which clients choose). */
  route: string | undefined;
  /** What an RPC or publish adds to the log line. */
  rpc: RpcLogFields | undefined;
  /** A fault of the bridge's own (a 500), logged with the line. */
  error: Error | undefined;
  private onClosed: (() => void) | undefined;

  constructor(
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    private readonly recorders: ExchangeRecorders,
  ) {
    req.exchange = this;
    this.id = assignRequestId(req, res);
    // 'close' follows a finished response as well as a client that went away.
    res.once('close', () => this.closed());
  }

  /** Runs when the response closes (answered, or the client went away), before the metrics record. */
  whenClosed(callback: () => void): void {
    this.onClosed = callback;
  }

  /** Answers with the problem, or cuts the connection when a response has already begun. */
  fail(problem: HttpProblem): void {
    if (this.res.headersSent) {
      this.res.destroy();
      return;
    }
    sendProblem(this.res, problem, this.id);
  }

  /** What an error answers: a problem as it is; anything else is a fault of the bridge's, logged with the line. */
  problemOf(err: unknown): HttpProblem {
    if (err instanceof HttpProblem) return err;
    this.error = toError(err);
    return internalProblem();
  }

  /** Milliseconds since the request arrived. */
  get elapsedMs(): number {
    return performance.now() - this.startedAt;
  }

  private closed(): void {
    this.onClosed?.();
    const { req, res } = this;
    const status = res.writableFinished ? res.statusCode : CLIENT_CLOSED;
    const route = this.route ?? expressRoute(req) ?? 'unmatched';
    const elapsedMs = this.elapsedMs;
    this.recorders.metrics.observeHttp(req.method ?? 'GET', route, status, elapsedMs / 1000);
    logRequest(this.recorders.logger, req, {
      id: this.id,
      statusCode: res.statusCode,
      finished: res.writableFinished,
      responseTimeMs: Math.round(elapsedMs),
      rpc: this.rpc,
      error: this.error,
    });
  }
}

/** The pattern express matched (its documented `req.route`), for the routes express serves. */
function expressRoute(req: IncomingMessage): string | undefined {
  const { route, baseUrl } = req as IncomingMessage & { route?: { path: string | string[] }; baseUrl?: string };
  if (route === undefined) return undefined;
  return (baseUrl ?? '') + (Array.isArray(route.path) ? route.path.join('|') : route.path);
}
