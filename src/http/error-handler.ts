import type { NextFunction, Request, Response } from 'express';
import { HttpProblem, problemDocument, toError } from '../errors.js';
import type { Metrics } from '../metrics.js';
import { ClientClosedError } from './raw-body.js';
import { idOf } from './request-id.js';
import { type RpcLocals, recordFailure } from './rpc-route.js';

/** The one error middleware: every failure leaves as application/problem+json. */
export function errorHandler(metrics: Metrics) {
  return (err: unknown, req: Request, res: Response<unknown, RpcLocals>, _next: NextFunction): void => {
    if (err instanceof ClientClosedError) {
      recordFailure(metrics, res.locals, 'cancelled');
      return;
    }
    const problem = asProblem(err);
    if (problem.status === 500) {
      // pino-http logs it with the request line.
      (res as Response & { err?: Error }).err = toError(err);
    }
    if (problem.status < 500) recordFailure(metrics, res.locals, 'rejected');
    if (res.headersSent) {
      res.destroy();
      return;
    }
    sendProblem(res, problem, idOf(req));
  };
}

export function sendProblem(res: Response, problem: HttpProblem, requestId: string): void {
  res.statusCode = problem.status;
  res.setHeader('Content-Type', 'application/problem+json');
  const { retryAfterSeconds } = problem.options;
  if (retryAfterSeconds !== undefined) res.setHeader('Retry-After', String(retryAfterSeconds));
  // The rest of an oversized body is not worth reading: let the connection go.
  if (problem.code === 'payload-too-large') res.setHeader('Connection', 'close');
  res.end(JSON.stringify(problemDocument(problem, requestId)));
}

function asProblem(err: unknown): HttpProblem {
  if (err instanceof HttpProblem) return err;
  // Express and Node attach a 4xx status to what they refuse (e.g. an undecodable %-escape in the path).
  const status = (err as { status?: unknown } | null)?.status;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new HttpProblem('invalid-request', toError(err).message);
  }
  return new HttpProblem('internal', 'The bridge failed to handle the request; see its logs');
}
