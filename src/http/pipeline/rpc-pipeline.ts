import type { Metrics, RpcOutcomeLabel } from '../../observability/metrics.js';
import type { RequestSpan, Tracing } from '../../observability/tracing.js';
import { parseTraceparent } from '../../observability/w3c-trace-context.js';
import { type CallerLease, type CallerPools, CallerRefused } from '../../rpc/caller-pools.js';
import type { CallerQuota } from '../../rpc/caller-quota.js';
import type { DeferredCalls, DeferredResult } from '../../rpc/deferred-calls.js';
import type { RpcOutcome } from '../../rpc/outcome.js';
import type { RpcCall } from '../../rpc/rpc-call.js';
import type { RpcClient } from '../../rpc/rpc-client.js';
import type { Caller } from '../access/access-control.js';
import type { RpcLogFields } from '../access-log.js';
import { type Deferral, readDeferral } from '../deferral.js';
import type { HttpExchange } from '../exchange.js';
import { HttpProblem } from '../problems.js';
import { ClientClosedError, readRawBody } from '../raw-body.js';
import type { RefusalBudget } from '../refusal-budget.js';
import type { MappingLimits, MessageFields, RpcTarget } from '../request-mapping.js';
import { callerRefusalProblem } from '../response-mapping.js';
import type { RouteSet } from '../routes/route-set.js';
import { admit } from './admit.js';
import { type CallInput, startCall } from './call.js';
import { fingerprintOf, pendingAnswer, REPLAYED_HEADER, refusalProblem } from './defer.js';
import { acceptsEventStream, EventStream, type StreamSettings } from './event-stream.js';
import { mapMessage } from './message.js';
import { recordOutcome } from './record.js';
import { render, write } from './render.js';
import { type RouteFacts, type RouteMatch, resolveTarget, routeFacts, routeLimits } from './resolve.js';

export interface RpcPipelineDeps {
  readonly rpc: RpcClient;
  readonly metrics: Metrics;
  readonly limits: MappingLimits;
  readonly maxBodyBytes: number;
  /** How long an exchange target's names may be, for the broker to be able to refuse it. */
  readonly refusalBudget: RefusalBudget;
  readonly isShuttingDown: () => boolean;
  /** Spans for each request, when tracing is configured; undefined costs nothing per request. */
  readonly tracing?: Tracing | undefined;
  /** AMQP_IDENTITY=caller: the RPC core on a connection of the caller's own broker user. */
  readonly callerPools?: Pick<CallerPools, 'clientFor'> | undefined;
  /** Requests in flight per caller (MAX_IN_FLIGHT_PER_CALLER). */
  readonly callerQuota: CallerQuota;
  /** Asynchronous calls and idempotency keys, kept on the broker. */
  readonly deferred: DeferredCalls;
  /** ASYNC_MAX_TIMEOUT_MS: the timeout ceiling of an asynchronous call. */
  readonly asyncMaxTimeoutMs: number;
  /** For callers who ask for a stream (`Accept: text/event-stream`). */
  readonly streams: StreamSettings;
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
  /** Set when the caller asked for the replies as server-sent events. */
  private stream: EventStream | undefined;
  private lease: CallerLease | undefined;
  /** `Prefer: respond-async` or `Idempotency-Key`; undefined for a plain call. */
  private deferral: Deferral | undefined;
  /** Stops a deferred request's waiting when its caller goes away (the call itself goes on). */
  private abandoned: AbortController | undefined;
  /** When a deferred call was handed to the core: its Server-Timing counts to the reply, not the confirm. */
  private deferredSentAt: number | undefined;
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
      this.deferral = readDeferral(exchange.req.headers, facts.operation, target.label);
      // A named route's timeoutMs is the operator's ceiling, asynchronous or not; the raw routes' is RPC_MAX_TIMEOUT_MS.
      const timeouts =
        this.deferral?.async === undefined || match.kind === 'named'
          ? limits.limits
          : { ...limits.limits, maxTimeoutMs: deps.asyncMaxTimeoutMs, maxTimeoutSource: 'ASYNC_MAX_TIMEOUT_MS' };
      fields = mapMessage(exchange.req, match.query, target, timeouts, facts.operation, facts.namedRoute, caller);
      brokerLogin = deps.callerPools === undefined ? undefined : this.routes.access.brokerLoginOf(caller);
      deps.refusalBudget.check(target, brokerLogin?.username);
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
    // A deferred call's replies wait in a queue of their own, read as one answer: it is not streamed.
    if (this.deferral !== undefined) {
      this.defer(this.deferral, rpc, input);
      return;
    }
    // One header compare on the plain path; a publish has no replies to stream.
    if (this.facts.operation === 'rpc' && acceptsEventStream(this.exchange.req.headers.accept)) {
      const { streams } = this.deps;
      if (!streams.gate.tryEnter()) {
        this.fail(
          new HttpProblem('overloaded', `${streams.gate.limit} streams are open (STREAM_MAX_OPEN)`, {
            target: target.label,
            retryAfterSeconds: 1,
          }),
        );
        return;
      }
      this.stream = new EventStream(this.exchange, streams, this.deps.metrics, target.label);
    }
    this.call = startCall(rpc, input, (outcome) => this.settled(outcome, target), this.stream?.part);
    this.stream?.begin(this.call);
    this.log.correlationId = this.call.correlationId;
  }

  /**
   * Stage "call", deferred (defer.ts, rpc/deferred-calls.ts): an asynchronous call, or one sent at most
   * once per idempotency key. Its reply goes to a queue of its own on the broker, which outlives this
   * request and which any replica can read.
   */
  private defer(deferral: Deferral, rpc: RpcClient, input: CallInput): void {
    const { key } = deferral;
    // The key is the message's id: workers can deduplicate too.
    const fields = key === undefined ? input.fields : { ...input.fields, messageId: key };
    this.abandoned = new AbortController();
    this.deps.deferred
      .start({
        owner: this.quotaKey ?? '',
        operation: input.operation,
        deadline: input.receivedAt + fields.timeoutMs,
        async: deferral.async,
        key:
          key === undefined
            ? undefined
            : { value: key, fingerprint: fingerprintOf(input.operation, input.target, fields, input.body) },
        send: (replyTo) =>
          new Promise((resolve) => {
            this.deferredSentAt = performance.now();
            const call = startCall(rpc, { ...input, fields, replyTo }, (outcome) =>
              resolve({ outcome, published: call.isPublished }),
            );
            this.call = call;
            this.log.correlationId = call.correlationId;
          }),
        signal: this.abandoned.signal,
      })
      .then(
        (result) => this.deferredSettled(result, input.target),
        (err: unknown) => this.fail(err),
      );
  }

  private deferredSettled(result: DeferredResult, target: RpcTarget): void {
    if (this.gone) return;
    const { metrics } = this.deps;
    const { async, key } = this.deferral ?? {};
    if (key !== undefined) {
      const replayed = result.kind !== 'refused' && result.replayed;
      metrics.idempotentRequests.labels(keyResult(result)).inc();
      if (replayed) this.exchange.res.setHeader(REPLAYED_HEADER, 'true');
    }
    if (result.kind === 'refused') {
      if (async !== undefined) metrics.asyncCalls.labels('failed').inc();
      this.fail(refusalProblem(result.refusal, target.label));
      return;
    }
    if (result.kind === 'pending') {
      metrics.asyncCalls.labels('deferred').inc();
      this.record('deferred');
      write(this.exchange.res, pendingAnswer(result.call, async !== undefined), this.deps.isShuttingDown());
      return;
    }
    if (async !== undefined) metrics.asyncCalls.labels(result.outcome.kind === 'reply' ? 'answered' : 'failed').inc();
    this.settled(result.outcome, target);
  }

  /**
   * Stage "render". Runs inside amqplib's consumer callback (a reply) or a channel event: amqplib turns a
   * listener's exception into a frame error that closes the whole connection, losing every call on it.
   * So a failure while answering this call ends this call (500), and nothing else.
   */
  private settled(outcome: RpcOutcome, target: RpcTarget): void {
    try {
      this.span?.endPublish(outcome.kind);
      if (this.stream?.isOpen === true) {
        const ended = this.stream.end(outcome);
        this.log.events = this.stream.events;
        this.log.bytesOut = this.stream.bytesOut;
        this.record(ended);
        return;
      }
      const rendered = render(outcome, {
        operation: this.facts.operation,
        targetLabel: target.label,
        requestId: this.exchange.id,
        roundTripMs:
          this.deferredSentAt === undefined ? (this.call?.roundTripMs ?? 0) : performance.now() - this.deferredSentAt,
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
    // Refused before it had an outcome: the edge rejected it, or the bridge had no room or no broker for
    // it (a caller's own connection: AMQP_IDENTITY=caller), or it is draining.
    if (problem.code === 'shutting-down') this.record('unavailable');
    else if (problem.status < 500) this.record('rejected');
    else if (problem.code === 'overloaded') this.record('overloaded');
    else if (problem.status === 503) this.record('unavailable');
    if (this.deps.isShuttingDown()) this.exchange.res.setHeader('Connection', 'close');
    this.exchange.fail(problem);
  }

  private asProblem(err: unknown): HttpProblem {
    if (err instanceof CallerRefused) return callerRefusalProblem(err.refusal);
    return this.exchange.problemOf(err);
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
    this.abandoned?.abort();
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

/** What a request with an Idempotency-Key came to, as `rpc_idempotent_requests_total` counts it. */
function keyResult(result: DeferredResult): 'first' | 'replayed' | 'conflict' | 'refused' {
  if (result.kind === 'refused') return result.refusal.kind === 'key-reused' ? 'conflict' : 'refused';
  return result.replayed ? 'replayed' : 'first';
}
