/**
 * The error catalogue: every problem the bridge can answer with, its stable code and HTTP status.
 * Responses are RFC 9457 problem details; `type` is a tag URI (RFC 9457 §3.1.1 suggests tag URIs
 * for types that are identifiers, not documentation pages).
 */

export const PROBLEMS = {
  'invalid-request': { status: 400, title: 'Invalid request' },
  unauthorized: { status: 401, title: 'Authentication required' },
  forbidden: { status: 403, title: 'Not allowed' },
  'not-found': { status: 404, title: 'No such route' },
  'method-not-allowed': { status: 405, title: 'Method not allowed' },
  unroutable: { status: 404, title: 'Message was not routed to any queue' },
  'exchange-not-found': { status: 404, title: 'Exchange does not exist' },
  'payload-too-large': { status: 413, title: 'Request body too large' },
  'call-not-found': { status: 404, title: 'No such call' },
  'idempotency-key-reused': { status: 422, title: 'Idempotency-Key already used for another request' },
  'idempotency-key-busy': { status: 409, title: 'Idempotency-Key in use by a request that has not settled' },
  // Refused by the HTTP layer before any route runs (server.ts answers them): what Node's parser
  // refuses, an HTTP/1.1 request without Host, an expectation other than 100-continue.
  'malformed-request': { status: 400, title: 'Malformed HTTP request' },
  'request-timeout': { status: 408, title: 'Request not received in time' },
  'expectation-failed': { status: 417, title: 'Expectation not supported' },
  'headers-too-large': { status: 431, title: 'Request header fields too large' },
  'too-many-requests': { status: 429, title: 'Too many requests in flight from this caller' },
  'request-lost': { status: 502, title: 'Request lost with its broker channel' },
  'bad-reply': { status: 502, title: 'Worker reply is unusable' },
  'broker-unavailable': { status: 503, title: 'Broker unavailable' },
  'broker-rejected': { status: 503, title: 'Broker refused the message' },
  overloaded: { status: 503, title: 'Too many requests in flight' },
  'shutting-down': { status: 503, title: 'Bridge is shutting down' },
  timeout: { status: 504, title: 'No reply in time' },
  internal: { status: 500, title: 'Internal error' },
} as const satisfies Record<string, { status: number; title: string }>;

export type ProblemCode = keyof typeof PROBLEMS;

export const PROBLEM_TYPE_PREFIX = 'tag:amqp-rpc-bridge,2026:problem/';

export interface ProblemOptions {
  /** The exchange/queue the request addressed, when known. */
  readonly target?: string;
  /** Seconds, for 503 answers. */
  readonly retryAfterSeconds?: number;
  /** WWW-Authenticate, for 401 answers. */
  readonly challenge?: string;
}

/** An error that knows how it is answered over HTTP. Throw it from a route; the error middleware renders it. */
export class HttpProblem extends Error {
  override name = 'HttpProblem';
  readonly status: number;

  constructor(
    readonly code: ProblemCode,
    readonly detail: string,
    readonly options: ProblemOptions = {},
  ) {
    super(detail);
    this.status = PROBLEMS[code].status;
  }
}

/** The answer to a fault of the bridge's own: the caller learns nothing of it; the request's log line has it. */
export function internalProblem(): HttpProblem {
  return new HttpProblem('internal', 'The bridge failed to handle the request; see its logs');
}

export interface ProblemDocument {
  type: string;
  title: string;
  status: number;
  detail: string;
  requestId: string;
  target?: string;
}

export function problemDocument(problem: HttpProblem, requestId: string): ProblemDocument {
  const document: ProblemDocument = {
    type: PROBLEM_TYPE_PREFIX + problem.code,
    title: PROBLEMS[problem.code].title,
    status: problem.status,
    detail: problem.detail,
    requestId,
  };
  if (problem.options.target !== undefined) document.target = problem.options.target;
  return document;
}
