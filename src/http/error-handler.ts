import type { NextFunction, Request, Response } from 'express';
import { toError } from '../errors.js';
import { sendProblem } from './problem-response.js';
import { HttpProblem, internalProblem } from './problems.js';

/** The error middleware of the express routes: every failure leaves as application/problem+json. */
export function errorHandler() {
  return (err: unknown, req: Request, res: Response, _next: NextFunction): void => {
    const problem = asProblem(err);
    const { exchange } = req;
    if (exchange === undefined) {
      // Every request reaches express through the edge, which gave it an exchange; this is a bug's path.
      if (res.headersSent) res.destroy();
      else sendProblem(res, problem, '');
      return;
    }
    // Logged with the request's line.
    if (problem.status === 500) exchange.error = toError(err);
    exchange.fail(problem);
  };
}

function asProblem(err: unknown): HttpProblem {
  if (err instanceof HttpProblem) return err;
  // Express and Node attach a 4xx status to what they refuse (e.g. a body on a GET they cannot parse).
  const status = (err as { status?: unknown } | null)?.status;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new HttpProblem('invalid-request', toError(err).message);
  }
  return internalProblem();
}
