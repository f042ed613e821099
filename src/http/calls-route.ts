import type { Metrics } from '../observability/metrics.js';
import type { CallCancel, CallLookup, DeferredCalls } from '../rpc/deferred-calls.js';
import type { Caller } from './access/access-control.js';
import { quotaKey } from './access/caller-quota.js';
import { readPreferences } from './deferral.js';
import type { HttpExchange } from './exchange.js';
import { CALLS_PREFIX, pendingAnswer, refusalProblem } from './pipeline/defer.js';
import { render, write } from './pipeline/render.js';
import { HttpProblem } from './problems.js';
import type { RouteSet } from './routes/route-set.js';

const ROUTE = '/calls/:id';
export const CALLS_METHODS = 'GET, HEAD, DELETE';

export interface CallsRouteDeps {
  readonly deferred: DeferredCalls;
  readonly metrics: Metrics;
  /** ASYNC_MAX_TIMEOUT_MS: no long-poll outlasts the longest call. */
  readonly asyncMaxTimeoutMs: number;
  readonly isShuttingDown: () => boolean;
}

/**
 * `GET /calls/{id}`: what an asynchronous call has come to (202 pending, its reply mapped as a
 * synchronous call's, 504 once its deadline passed with no reply, 404 when unknown, expired or
 * another caller's); `Prefer: wait=N` holds the request up to N seconds for the reply. `DELETE`
 * gives the call up; `HEAD` is `GET` without the body. Any replica answers: the call lives on the broker.
 */
export function runCallRequest(deps: CallsRouteDeps, exchange: HttpExchange, url: string, routes: RouteSet): void {
  exchange.route = ROUTE;
  const { req, res } = exchange;
  const method = req.method ?? 'GET';
  // HEAD is GET without the body (RFC 9110 §9.3.2): node:http leaves the body out by itself.
  if (method !== 'GET' && method !== 'HEAD' && method !== 'DELETE') {
    res.setHeader('Allow', CALLS_METHODS);
    exchange.fail(
      new HttpProblem('method-not-allowed', `${method} is not allowed on ${ROUTE}; only ${CALLS_METHODS} are`),
    );
    return;
  }
  const queryAt = url.indexOf('?');
  const id = url.slice(CALLS_PREFIX.length, queryAt === -1 ? undefined : queryAt);
  let caller: Caller | Promise<Caller>;
  try {
    caller = routes.access.identify(req.headers);
  } catch (err) {
    exchange.fail(exchange.problemOf(err));
    return;
  }
  Promise.resolve(caller)
    .then((known) => {
      const owner = quotaKey(known, req.socket.remoteAddress);
      return method === 'DELETE' ? giveUp(deps, exchange, owner, id) : lookUp(deps, exchange, owner, id);
    })
    .catch((err: unknown) => exchange.fail(exchange.problemOf(err)));
}

async function lookUp(deps: CallsRouteDeps, exchange: HttpExchange, owner: string, id: string): Promise<void> {
  const { req, res } = exchange;
  const startedAt = performance.now();
  const waitMs = Math.min(readPreferences(req.headers.prefer).waitMs ?? 0, deps.asyncMaxTimeoutMs);
  const gone = new AbortController();
  res.once('close', () => gone.abort());
  const found = await deps.deferred.lookup(owner, id, waitMs, gone.signal);
  deps.metrics.callLookups.labels(found.kind).inc();
  if (res.writableEnded || gone.signal.aborted) return;
  const answer = answerFor(found, exchange.id, performance.now() - startedAt);
  if (answer instanceof HttpProblem) exchange.fail(answer);
  else write(res, answer, deps.isShuttingDown());
}

function answerFor(found: CallLookup, requestId: string, lookupMs: number): HttpProblem | Parameters<typeof write>[1] {
  switch (found.kind) {
    case 'reply': {
      const rendered = render(
        { kind: 'reply', reply: found.reply },
        // Server-Timing says how long this request waited for the reply (a long-poll's wait).
        { operation: 'rpc', targetLabel: 'call', requestId, roundTripMs: lookupMs, timing: 'call' },
      );
      if (rendered.kind === 'answer') return rendered;
      return rendered.kind === 'problem' ? rendered.problem : new HttpProblem('internal', 'No answer for the reply');
    }
    case 'pending':
      return pendingAnswer(found.call, false);
    case 'timeout':
      return new HttpProblem(
        'timeout',
        `No reply came before the call's deadline (${new Date(found.call.deadline).toISOString()})`,
      );
    case 'unknown':
      return callNotFound();
    case 'refused':
      return refusalProblem(found.refusal, undefined);
    case 'failed':
      return brokerUnavailable('The call could not be looked up; retry');
  }
}

async function giveUp(deps: CallsRouteDeps, exchange: HttpExchange, owner: string, id: string): Promise<void> {
  let cancelled: CallCancel;
  try {
    cancelled = await deps.deferred.cancel(owner, id);
  } catch {
    // The broker's own words name queues and vhosts: they are not the caller's business.
    exchange.fail(brokerUnavailable('The call could not be given up; retry'));
    return;
  }
  if (cancelled.kind === 'refused') {
    exchange.fail(refusalProblem(cancelled.refusal, undefined));
    return;
  }
  if (cancelled.kind === 'unknown') {
    exchange.fail(callNotFound());
    return;
  }
  exchange.res.statusCode = 204;
  exchange.res.end();
}

/** One answer for an unknown, expired, given-up or foreign id: nobody learns whether an id is in use. */
function callNotFound(): HttpProblem {
  return new HttpProblem('call-not-found', 'No such call: unknown, expired, given up, or not yours');
}

function brokerUnavailable(detail: string): HttpProblem {
  return new HttpProblem('broker-unavailable', detail, { retryAfterSeconds: 1 });
}
