import { toError } from '../../errors.js';
import type { Metrics, RpcOutcomeLabel } from '../../observability/metrics.js';
import type { RequestSpan, Tracing } from '../../observability/tracing.js';
import { parseTraceparent } from '../../observability/w3c-trace-context.js';
import { type CallerLease, type CallerPools, CallerRefused } from '../../rpc/caller-pools.js';
import type { RpcOutcome } from '../../rpc/outcome.js';
import type { RpcCall } from '../../rpc/rpc-call.js';
import type { RpcClient } from '../../rpc/rpc-client.js';
import type { Caller } from '../access/access-control.js';
import type { CallerQuota } from '../access/caller-quota.js';
import type { RpcLogFields } from '../access-log.js';
import type { HttpExchange } from '../exchange.js';
import { HttpProblem } from '../problems.js';
import { ClientClosedError, readRawBody } from '../raw-body.js';
import type { MappingLimits, MessageFields, RpcTarget } from '../request-mapping.js';
import { callerRefusalProblem } from '../response-mapping.js';
import type { RouteSet } from '../routes/route-set.js';
import { admit } from './admit.js';
import { startCall } from './call.js';
import { mapMessage } from './message.js';
import { recordOutcome } from './record.js';
import { render, write } from './render.js';
import { type RouteFacts, type RouteMatch, resolveTarget, routeFacts, routeLimits } from './resolve.js';

export interface RpcPipelineDeps {
  readonly rpc: RpcClient;
  readonly metrics: Metrics;
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

/** Runs an RPC or publish request (raw or named) through the pipeline; `routes` is the set it arrived under. */
export function runRpc(deps: RpcPipelineDeps, exchange: HttpExchange, match: RouteMatch, routes: RouteSet): void {
  new RpcPipeline(deps, exchange, match, routes).identify();
}

/**
 * One RPC or publish request through its stages, in this order:
 *
 *   identify → resolve target → admit → map the message → read body → call → render → record
 *
 * Each stage is a module of this folder; this class holds what they share and keeps the order. Every way
 * a request ends goes through `answer` or `fail`, and `closed` (the response's 'close') records it once.
 */
class RpcPipeline {
  /** The call's one deadline counts from here, however long the body then takes to arrive. */
  private readonly receivedAt = Date.now();
  private readonly log: RpcLogFields;
  private readonly facts: RouteFacts;
  private readonly span: RequestSpan | undefined;
  private call: RpcCall | undefined;
  private lease: CallerLease | undefined;
  /** Whom this request counts against in MAX_IN_FLIGHT_PER_CALLER, once admitted. */
  private quotaKey: string | undefined;
  /** The response has closed (answered, or the client went away). */
  private gone = false;

  constructor(
    private readonly deps: RpcPipelineDeps,
    private readonly exchange: HttpExchange,
    private readonly match: RouteMatch,
    private readonly routes: RouteSet,
  ) {
    this.facts = routeFacts(match);
    this.log = { route: this.facts.pattern };
    exchange.route = this.facts.pattern;
    exchange.rpc = this.log;
    const { tracing } = deps;
    if (tracing !== undefined) {
      const { headers } = exchange.req;
      const parent = parseTraceparent(headers.traceparent, headers.tracestate);
      this.span = tracing.startRequest({ route: this.facts.pattern, parent });
    }
    exchange.whenClosed(() => this.closed());
  }

  /** Stage "identify": who calls, from the request's credentials; only a JWT makes it wait. */
  identify(): void {
    let caller: Caller | Promise<Caller>;
    try {
      caller = this.routes.access.identify(this.exchange.req.headers);
    } catch (err) {
      this.fail(err);
      return;
    }
    if (caller instanceof Promise)
      caller.then(
        (known) => this.admitted(known),
        (err: unknown) => this.fail(err),
      );
    else this.admitted(caller);
  }

  /** Stages "resolve target", "admit" and "map the message", then "read body" (and the caller's connection). */
  private admitted(caller: Caller): void {
    // A caller that left while its JWT was verified holds no place and needs no answer.
    if (this.gone) return;
    const { deps, exchange, match, facts } = this;
    let target: RpcTarget;
    let fields: MessageFields;
    let maxBodyBytes: number;
    let brokerLogin: ReturnType<RouteSet['access']['brokerLoginOf']>;
    try {
      target = resolveTarget(match);
      this.log.target = target.label;
      const admitting = {
        caller,
        clientAddress: exchange.req.socket.remoteAddress,
        namedRoute: facts.namedRoute,
        target,
      };
      this.quotaKey = admit(admitting, this.routes.admission, deps);
      const limits = routeLimits(match, deps);
      maxBodyBytes = limits.maxBodyBytes;
      fields = mapMessage(exchange.req, match.query, target, limits.limits, facts.operation, facts.namedRoute, caller);
      brokerLogin = deps.callerPools === undefined ? undefined : this.routes.access.brokerLoginOf(caller);
    } catch (err) {
      this.fail(err);
      return;
    }
    const body = readRawBody(exchange.req, maxBodyBytes);
    if (brokerLogin === undefined) {
      body.then(
        (bytes) => this.called(deps.rpc, target, fields, bytes),
        (err: unknown) => this.fail(err),
      );
      return;
    }
    // The caller's own broker connection is made (or found) while its body arrives; held until 'close'.
    this.lease = deps.callerPools?.clientFor(brokerLogin, exchange.req.socket.remoteAddress);
    Promise.all([this.lease?.rpc, body]).then(
      ([rpc = deps.rpc, bytes]) => this.called(rpc, target, fields, bytes),
      (err: unknown) => this.fail(err),
    );
  }

  /** Stage "call". */
  private called(rpc: RpcClient, target: RpcTarget, fields: MessageFields, body: Buffer): void {
    // A caller that left while its JWT was verified or its broker connection opened: publish nothing.
    if (this.gone) return;
    this.log.bytesIn = body.length;
    const input = {
      operation: this.facts.operation,
      target,
      fields,
      body,
      receivedAt: this.receivedAt,
      requestId: this.exchange.id,
      span: this.span,
    };
    this.call = startCall(rpc, input, (outcome) => this.settled(outcome, target));
    this.log.correlationId = this.call.correlationId;
  }

  /**
   * Stage "render". Runs inside amqplib's consumer callback (a reply) or a channel event: amqplib turns a
   * listener's exception into a frame error that closes the whole connection, losing every call on it.
   * So a failure while answering this call ends this call (500), and nothing else.
   */
  private settled(outcome: RpcOutcome, target: RpcTarget): void {
    try {
      this.span?.endPublish(outcome.kind);
      const rendered = render(outcome, {
        operation: this.facts.operation,
        targetLabel: target.label,
        requestId: this.exchange.id,
        roundTripMs: this.call?.roundTripMs ?? 0,
      });
      if (rendered.kind === 'answer') {
        this.log.bytesOut = rendered.body.length;
        this.record('ok');
        write(this.exchange.res, rendered, this.deps.isShuttingDown());
      } else if (rendered.kind === 'problem') {
        this.record(rendered.label);
        this.fail(rendered.problem);
      } else {
        this.record('cancelled');
      }
    } catch (err) {
      if (this.log.outcome === undefined && err instanceof HttpProblem) this.record('bad_reply');
      try {
        this.fail(err);
      } catch {
        this.exchange.res.destroy();
      }
    }
  }

  /** Answers with the problem (or, for a client that left, with nothing). */
  private fail(err: unknown): void {
    if (err instanceof ClientClosedError) {
      this.record('cancelled');
      return;
    }
    const problem = this.asProblem(err);
    // Refused before it had an outcome: the edge rejected it (or, while draining, the bridge did).
    if (problem.code === 'shutting-down') this.record('unavailable');
    else if (problem.status < 500) this.record('rejected');
    if (this.deps.isShuttingDown()) this.exchange.res.setHeader('Connection', 'close');
    this.exchange.fail(problem);
  }

  private asProblem(err: unknown): HttpProblem {
    if (err instanceof HttpProblem) return err;
    if (err instanceof CallerRefused) return callerRefusalProblem(err.refusal);
    // Logged with the request's line.
    this.exchange.error = toError(err);
    return new HttpProblem('internal', 'The bridge failed to handle the request; see its logs');
  }

  /** Stage "record": once per request, whichever way it ended. */
  private record(outcome: RpcOutcomeLabel): void {
    if (this.log.outcome !== undefined) return;
    this.log.outcome = outcome;
    const seconds = this.exchange.elapsedMs / 1000;
    recordOutcome(this.deps.metrics, this.facts.operation, this.log, seconds, this.span?.sampledTraceId);
  }

  private closed(): void {
    this.gone = true;
    this.call?.cancel();
    this.lease?.release();
    if (this.quotaKey !== undefined) this.deps.callerQuota.release(this.quotaKey);
    const { res } = this.exchange;
    const answered = res.writableFinished;
    // Gone while its body was still arriving, before any outcome.
    if (!answered) this.record('cancelled');
    this.span?.end(answered ? res.statusCode : 499, this.log.outcome, this.exchange.error);
  }
}
