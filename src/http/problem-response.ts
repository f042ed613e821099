import type { ServerResponse } from 'node:http';
import { type HttpProblem, problemDocument } from './problems.js';

/** Writes an RFC 9457 problem document, with Retry-After where the problem carries one. */
export function sendProblem(res: ServerResponse, problem: HttpProblem, requestId: string): void {
  res.statusCode = problem.status;
  res.setHeader('Content-Type', 'application/problem+json');
  const { retryAfterSeconds } = problem.options;
  if (retryAfterSeconds !== undefined) res.setHeader('Retry-After', String(retryAfterSeconds));
  if (problem.options.challenge !== undefined) res.setHeader('WWW-Authenticate', problem.options.challenge);
  // The rest of an oversized body is not worth reading: let the connection go.
  if (problem.code === 'payload-too-large') res.setHeader('Connection', 'close');
  res.end(JSON.stringify(problemDocument(problem, requestId)));
}
