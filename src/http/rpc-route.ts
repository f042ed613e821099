import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { toError } from '../errors.js';
import type { Metrics, RpcOutcomeLabel } from '../observability/metrics.js';
import type { RequestSpan, Tracing } from '../observability/tracing.js';
import { parseTraceparent } from '../observability/w3c-trace-context.js';
import { type BrokerLogin, type CallerLease, type CallerPools, CallerRefused } from '../rpc/caller-pools.js';
import type { RpcOutcome } from '../rpc/outcome.js';
import type { RpcCall } from '../rpc/rpc-call.js';
import type { RpcClient } from '../rpc/rpc-client.js';
import type { Caller } from './access/access-control.js';
import { type CallerQuota, quotaKey } from './access/caller-quota.js';
import { logRpcRequest, type RpcLogFields } from './access-log.js';
import { sendProblem } from './problem-response.js';
import { HttpProblem } from './problems.js';
import { ClientClosedError, readRawBody } from './raw-body.js';
import { assignRequestId } from './request-id.js';
import { exchangeTarget, type MappingLimits, messageFields, queueTarget, type RpcTarget } from './request-mapping.js';
import { callerRefusalProblem, outcomeProblem, replyToHttp } from './response-mapping.js';
import type { RouteSet } from './routes/route-set.js';
import { type NamedRouteMatch, resolveTarget } from './routes/route-table.js';
import { decodeSegments, type RpcPath, timeoutParameter } from './rpc-path.js';

export interface RpcRouteDeps {
  readonly rpc: RpcClient;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly limits: MappingLimits;
  readonly maxBodyBytes: number;
  readonly isShuttingDown: () => boolean;
  /** Spans for each request, when tracing is configured; undefined costs nothing per request. */
  readonly tracing?: Tracing | undefined;
  /** AMQP_IDENTITY=caller: the RPC core on a connection of the caller's own broker user. */
  readonly callerPools?: Pick<CallerPools, 'clientFor'> | undefined;
  /** Requests in flight per caller (MAX_IN_FLIGHT_PER_CALLER). */
  readonly callerQuota: CallerQuota;
}

const OUTCOME_LABELS: Record<RpcOutcome['kind'], RpcOutcomeLabel> = {
  reply: 'ok',
  accepted: 'ok',
  unroutable: 'unroutable',
  'exchange-not-found': 'unroutable',
  'exchange-name-refused': 'rejected',
  'exchange-forbidden': 'rejected',
  lost: 'lost',
  timeout: 'timeout',
  cancelled: 'cancelled',
  unavailable: 'unavailable',
  overloaded: 'overloaded',
  nacked: 'nacked',
};

/** The route patterns requests are counted under in http_request_duration_seconds. */
const ROUTES = {
  rpc: { queue: '/rpc/:queue', exchange: '/rpc/:exchange/:routingKey' },
  publish: { queue: '/publish/:queue', exchange: '/publish/:exchange/:routingKey' },
} as const;
/** nginx's code for "client closed the request": nothing was answered. */
const CLIENT_CLOSED = 499;

/** A raw route (`/rpc/...`, `/publish/...`) or a named route of the routes file. */
export type RouteMatch = RpcPath | NamedRouteMatch;

/** `routes`: the set in force when the request arrived (a reload swaps it for later requests). */
export type RpcRouteHandler = (req: IncomingMessage, res: ServerResponse, match: RouteMatch, routes: RouteSet) => void;

/**
 * POST /rpc/{queue} and POST /rpc/{exchange}/{routingKey}: validate, publish, wait for the reply,
 * answer. POST /publish/... the same way, waiting for the broker's confirm instead of a reply. This is the hot path, so it runs on node:http directly rather than through express's
 * router (which measured ~140 µs per request here); everything else the bridge serves is express.
 */
export function createRpcRoute(deps: RpcRouteDeps): RpcRouteHandler {
  return (req, res, match, routes) => {
    new RpcHttpCall(deps, req, res, match, routes).begin();
  };
}

/** One RPC request from arrival to its log line. Every way it ends goes through `answer` or `fail`. */
class RpcHttpCall {
  private readonly startedAt = performance.now();
  /** The call's one deadline counts from here, however long the body then takes to arrive. */
  private readonly receivedAt = Date.now();
  private readonly log: RpcLogFields = {};
  private readonly requestId: string;
  private call: RpcCall | undefined;
  private span: RequestSpan | undefined;
  private recorded = false;
  private error: Error | undefined;
  /** The response has closed (answered, or the client went away). */
  private gone = false;
  /** AMQP_IDENTITY=caller: the caller's connection, held until the response closes. */
  private lease: CallerLease | undefined;
  private readonly operation: 'rpc' | 'publish';
  /** Whom this request counts against in MAX_IN_FLIGHT_PER_CALLER, once admitted to count. */
  private quotaKey: string | undefined;

  constructor(
    private readonly deps: RpcRouteDeps,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly match: RouteMatch,
    private readonly routes: RouteSet,
  ) {
    this.operation = match.kind === 'raw' ? match.operation : match.route.definition.operation;
    this.requestId = assignRequestId(req, res);
    req.id = this.requestId;
    // 'close' follows a finished response as well as a client that went away: log once, and cancel
    // the call (which does nothing if it has already settled).
    res.once('close', () => this.closed());
  }

  begin(): void {
    const { match } = this;
    const route =
      match.kind === 'raw'
        ? ROUTES[match.operation][match.segments.length === 1 ? 'queue' : 'exchange']
        : match.route.definition.path;
    this.log.route = route;
    const { tracing } = this.deps;
    if (tracing !== undefined) {
      const { headers } = this.req;
      this.span = tracing.startRequest({ route, parent: parseTraceparent(headers.traceparent, headers.tracestate) });
    }
    let caller: Caller | Promise<Caller>;
    try {
      caller = this.routes.access.identify(this.req.headers);
    } catch (err) {
      this.fail(err);
      return;
    }
    // Only a JWT makes identification wait; opaque tokens stay on the synchronous path.
    if (caller instanceof Promise) {
      caller.then(
        (known) => this.admit(known),
        (err: unknown) => this.fail(err),
      );
    } else {
      this.admit(caller);
    }
  }

  private admit(caller: Caller): void {
    // A caller that left while its JWT was verified holds no place and needs no answer.
    if (this.gone) return;
    const { match, routes } = this;
    let target: RpcTarget;
    let fields: ReturnType<typeof messageFields>;
    let maxBodyBytes = this.deps.maxBodyBytes;
    let brokerLogin: BrokerLogin | undefined;
    try {
      this.takeQuota(caller);
      if (match.kind === 'raw') {
        target = targetOf(decodeSegments(match));
      } else {
        target = resolveTarget(match);
        maxBodyBytes = match.route.maxBodyBytes;
      }
      this.log.target = target.label;
      routes.admission.admit({ caller, route: match.kind === 'raw' ? undefined : match.route, target });
      if (this.deps.isShuttingDown()) {
        this.record('unavailable');
        throw new HttpProblem('shutting-down', 'The bridge is shutting down; retry on another instance', {
          target: target.label,
          retryAfterSeconds: 1,
        });
      }
      const limits = match.kind === 'raw' ? this.deps.limits : match.route.limits;
      fields = messageFields(this.req.headers, timeoutParameter(match.query), target, limits, this.operation);
      // The route's own headers win over the caller's Amqp-Header-* of the same name.
      if (match.kind === 'named') Object.assign(fields.headers, match.route.definition.headers);
      // Who called, as the bridge verified it: the one identity header a worker may trust.
      if (caller.name !== undefined) fields.headers['x-caller'] = caller.name;
      brokerLogin = this.deps.callerPools === undefined ? undefined : routes.access.brokerLoginOf(caller);
    } catch (err) {
      this.fail(err);
      return;
    }
    if (brokerLogin === undefined) {
      readRawBody(this.req, maxBodyBytes).then(
        (body) => this.publish(this.deps.rpc, target, fields, body),
        (err: unknown) => this.fail(err),
      );
      return;
    }
    // The caller's own broker connection is made (or found) while its body arrives.
    this.lease = this.deps.callerPools?.clientFor(brokerLogin, this.req.socket.remoteAddress);
    Promise.all([this.lease?.rpc, readRawBody(this.req, maxBodyBytes)]).then(
      ([rpc = this.deps.rpc, body]) => this.publish(rpc, target, fields, body),
      (err: unknown) => this.fail(err),
    );
  }

  private publish(rpc: RpcClient, target: RpcTarget, fields: ReturnType<typeof messageFields>, body: Buffer): void {
    // A caller that left while its JWT was verified or its broker connection opened: publish nothing.
    if (this.gone) return;
    this.log.bytesIn = body.length;
    if (this.span !== undefined) {
      // The worker's span is to be the producer span's child, whatever the caller sent.
      const trace = this.span.startPublish({
        operation: this.operation,
        exchange: target.exchange,
        routingKey: target.routingKey,
        label: target.label,
        bodyBytes: body.length,
        messageId: fields.messageId ?? this.requestId,
      });
      fields.headers.traceparent = trace.traceparent;
      if (trace.tracestate === undefined) delete fields.headers.tracestate;
      else fields.headers.tracestate = trace.tracestate;
    }
    // Every field named, not `{ ...fields, mode, ... }`: V8 builds a spread followed by more
    // properties on a slow path that cost ~10 µs per request here.
    const call = rpc.start(
      {
        mode: this.operation,
        deliveryMode: fields.deliveryMode,
        exchange: target.exchange,
        routingKey: target.routingKey,
        body,
        timeoutMs: fields.timeoutMs,
        receivedAt: this.receivedAt,
        requestId: this.requestId,
        contentType: fields.contentType,
        contentEncoding: fields.contentEncoding,
        headers: fields.headers,
        priority: fields.priority,
        type: fields.type,
        messageId: fields.messageId,
      },
      (outcome) => this.settled(outcome, target),
    );
    this.call = call;
    this.log.correlationId = call.correlationId;
    this.span?.conversation(call.correlationId);
  }

  /**
   * Runs inside amqplib's consumer callback (a reply) or a channel event: amqplib turns a listener's
   * exception into a frame error that closes the whole connection, losing every call on it. So a
   * failure while answering this call ends this call (500), and nothing else.
   */
  private settled(outcome: RpcOutcome, target: RpcTarget): void {
    try {
      this.span?.endPublish(outcome.kind);
      this.answer(outcome, target);
    } catch (err) {
      try {
        this.fail(err);
      } catch {
        this.res.destroy();
      }
    }
  }

  private answer(outcome: RpcOutcome, target: RpcTarget): void {
    if (outcome.kind === 'cancelled') {
      this.record('cancelled');
      return;
    }
    if (outcome.kind === 'accepted') {
      this.accepted();
      return;
    }
    if (outcome.kind !== 'reply') {
      this.record(OUTCOME_LABELS[outcome.kind]);
      this.fail(outcomeProblem(outcome, target.label, this.operation));
      return;
    }
    let reply: ReturnType<typeof replyToHttp>;
    try {
      reply = replyToHttp(outcome.reply, target.label);
    } catch (err) {
      this.record('bad_reply');
      this.fail(err);
      return;
    }
    const { res } = this;
    res.statusCode = reply.status;
    for (const [name, value] of reply.headers) res.setHeader(name, value);
    res.setHeader('Server-Timing', `rpc;dur=${(this.call?.roundTripMs ?? 0).toFixed(2)}`);
    this.closeConnectionIfDraining();
    this.log.bytesOut = reply.body.length;
    this.record('ok');
    res.end(reply.body);
  }

  /** The broker has confirmed a publish: it is queued (or, without confirms, written to the broker). */
  private accepted(): void {
    const { res } = this;
    const body = `{"status":"accepted","requestId":${JSON.stringify(this.requestId)}}`;
    res.statusCode = 202;
    res.setHeader('Content-Type', 'application/json');
    res.setHeader('Server-Timing', `publish;dur=${(this.call?.roundTripMs ?? 0).toFixed(2)}`);
    this.closeConnectionIfDraining();
    this.log.bytesOut = body.length;
    this.record('ok');
    res.end(body);
  }

  /** Answers with the problem (or, for a client that left, with nothing). */
  private fail(err: unknown): void {
    if (err instanceof ClientClosedError) {
      this.record('cancelled');
      return;
    }
    let problem: HttpProblem;
    if (err instanceof HttpProblem) {
      problem = err;
    } else if (err instanceof CallerRefused) {
      problem = callerRefusalProblem(err.refusal);
    } else {
      this.error = toError(err);
      problem = new HttpProblem('internal', 'The bridge failed to handle the request; see its logs');
    }
    // Refused before it had an outcome: the edge rejected it.
    if (problem.status < 500) this.record('rejected');
    if (this.res.headersSent) {
      this.res.destroy();
      return;
    }
    this.closeConnectionIfDraining();
    sendProblem(this.res, problem, this.requestId);
  }

  /** Every answer given while draining, success or problem, tells the client to reconnect elsewhere. */
  private closeConnectionIfDraining(): void {
    if (this.deps.isShuttingDown()) this.res.setHeader('Connection', 'close');
  }

  private record(outcome: RpcOutcomeLabel): void {
    if (this.recorded) return;
    this.recorded = true;
    this.log.outcome = outcome;
    const target = this.log.target ?? '(invalid)';
    const seconds = (performance.now() - this.startedAt) / 1000;
    if (this.operation === 'publish') {
      this.deps.metrics.observePublish({
        target,
        outcome,
        seconds,
        requestBytes: this.log.bytesIn,
        traceId: this.span?.sampledTraceId,
      });
      return;
    }
    this.deps.metrics.observeRpc({
      target,
      outcome,
      seconds,
      requestBytes: this.log.bytesIn,
      responseBytes: this.log.bytesOut,
      traceId: this.span?.sampledTraceId,
    });
  }

  /** Counts this request against its caller's share; 429 when the caller already has its share in flight. */
  private takeQuota(caller: Caller): void {
    const { callerQuota, metrics } = this.deps;
    const key = quotaKey(caller, this.req.socket.remoteAddress);
    if (!callerQuota.tryAcquire(key)) {
      metrics.callerLimited.inc();
      throw new HttpProblem(
        'too-many-requests',
        `This caller already has ${callerQuota.limit} requests in flight (MAX_IN_FLIGHT_PER_CALLER); retry when one has been answered`,
        { retryAfterSeconds: 1 },
      );
    }
    this.quotaKey = key;
  }

  private closed(): void {
    this.gone = true;
    if (this.quotaKey !== undefined) this.deps.callerQuota.release(this.quotaKey);
    this.call?.cancel();
    this.lease?.release();
    const answered = this.res.writableFinished;
    // Gone while its body was still arriving, before any outcome.
    if (!answered) this.record('cancelled');
    const elapsedMs = performance.now() - this.startedAt;
    this.deps.metrics.observeHttp(
      'POST',
      this.log.route ?? ROUTES.rpc.queue,
      answered ? this.res.statusCode : CLIENT_CLOSED,
      elapsedMs / 1000,
    );
    this.span?.end(answered ? this.res.statusCode : CLIENT_CLOSED, this.log.outcome, this.error);
    logRpcRequest(this.deps.logger, this.req, this.res, Math.round(elapsedMs), this.log, this.error);
  }
}

function targetOf(segments: readonly string[]): RpcTarget {
  return segments.length === 1 ? queueTarget(segments[0]) : exchangeTarget(segments[0], segments[1]);
}
