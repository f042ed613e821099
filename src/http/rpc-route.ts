import type { Request, Response } from 'express';
import { HttpProblem } from '../errors.js';
import type { RpcLogFields } from '../logger.js';
import type { Metrics, RpcOutcomeLabel } from '../metrics.js';
import type { RpcOutcome } from '../rpc/outcome.js';
import type { RpcClient } from '../rpc/rpc-client.js';
import { readRawBody } from './raw-body.js';
import { idOf } from './request-id.js';
import { exchangeTarget, type MappingLimits, messageFields, queueTarget, type RpcTarget } from './request-mapping.js';
import { outcomeProblem, replyToHttp } from './response-mapping.js';

export interface RpcRouteDeps {
  readonly rpc: RpcClient;
  readonly metrics: Metrics;
  readonly limits: MappingLimits;
  readonly maxBodyBytes: number;
  readonly isShuttingDown: () => boolean;
}

const OUTCOME_LABELS: Record<RpcOutcome['kind'], RpcOutcomeLabel> = {
  reply: 'ok',
  unroutable: 'unroutable',
  'exchange-not-found': 'unroutable',
  lost: 'lost',
  timeout: 'timeout',
  cancelled: 'cancelled',
  unavailable: 'unavailable',
};

/** The RPC state kept on res.locals for the logger and the error handler. */
export interface RpcLocals {
  rpc?: RpcLogFields;
  rpcStartedAt?: number;
}

/**
 * POST /rpc/:queue and POST /rpc/:exchange/:routingKey: validate, publish, wait for the outcome,
 * answer. Errors thrown here are rendered by the error middleware, which also records them as
 * `rejected` in the metrics.
 */
export function rpcHandler(deps: RpcRouteDeps) {
  return async (req: Request, res: Response<unknown, RpcLocals>): Promise<void> => {
    const startedAt = performance.now();
    const log: RpcLogFields = {};
    res.locals.rpc = log;
    res.locals.rpcStartedAt = startedAt;
    const target = targetOf(req.params);
    log.target = target.label;
    if (deps.isShuttingDown()) {
      record(deps.metrics, log, startedAt, 'unavailable');
      throw new HttpProblem('shutting-down', 'The bridge is shutting down; retry on another instance', {
        target: target.label,
        retryAfterSeconds: 1,
      });
    }
    const fields = messageFields(req.headers, req.query as Record<string, unknown>, target, deps.limits);
    const body = await readRawBody(req, deps.maxBodyBytes);
    log.bytesIn = body.length;

    const call = deps.rpc.start({
      ...fields,
      exchange: target.exchange,
      routingKey: target.routingKey,
      body,
      requestId: idOf(req),
    });
    log.correlationId = call.correlationId;
    // 'close' also follows a normal finish; cancelling a settled call does nothing.
    res.once('close', () => call.cancel());
    const outcome = await call.outcome;
    log.outcome = OUTCOME_LABELS[outcome.kind];

    if (outcome.kind === 'cancelled') {
      record(deps.metrics, log, startedAt, 'cancelled');
      return;
    }
    if (outcome.kind !== 'reply') {
      record(deps.metrics, log, startedAt, OUTCOME_LABELS[outcome.kind]);
      throw outcomeProblem(outcome, target.label);
    }
    let reply: ReturnType<typeof replyToHttp>;
    try {
      reply = replyToHttp(outcome.message, target.label);
    } catch (err) {
      log.outcome = 'bad_reply';
      record(deps.metrics, log, startedAt, 'bad_reply');
      throw err;
    }
    res.statusCode = reply.status;
    for (const [name, value] of reply.headers) res.setHeader(name, value);
    res.setHeader('Server-Timing', `rpc;dur=${call.roundTripMs.toFixed(2)}`);
    log.bytesOut = reply.body.length;
    record(deps.metrics, log, startedAt, 'ok');
    res.end(reply.body);
  };
}

function targetOf(params: Request['params']): RpcTarget {
  return params.queue !== undefined ? queueTarget(params.queue) : exchangeTarget(params.exchange, params.routingKey);
}

function record(metrics: Metrics, log: RpcLogFields, startedAt: number, outcome: RpcOutcomeLabel): void {
  log.outcome = outcome;
  metrics.observeRpc(log.target ?? '(invalid)', outcome, (performance.now() - startedAt) / 1000);
}

/**
 * For the error middleware: an RPC request that ended in an error before it had an outcome was
 * refused at the edge (`rejected`), or its client left while sending it (`cancelled`).
 */
export function recordFailure(metrics: Metrics, locals: RpcLocals, outcome: 'rejected' | 'cancelled'): void {
  const { rpc: log, rpcStartedAt } = locals;
  if (log === undefined || rpcStartedAt === undefined || log.outcome !== undefined) return;
  record(metrics, log, rpcStartedAt, outcome);
}
